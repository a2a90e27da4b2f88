"""Commands that tell what fits this machine: setup, recommend, benchmark, optimize."""

from __future__ import annotations

import json
import math
import sys

import click

from your_ai.cli.common import (
    ENGINE_OPTION,
    MODEL_KINDS,
    POSITIVE,
    check_output,
    fail,
    fail_stopped,
    launch_processes,
)
from your_ai.cli.run_file import printed_run_file_options
from your_ai.fit.plan import (
    DEFAULT_LOG,
    DEFAULT_STEPS,
    DEFAULT_TIMEOUT_S,
    SWEEP_STEPS,
    FitConfig,
    check_fit_engine,
    fit_device,
)
from your_ai.fit.sweep import FULL_GRID, QUICK_GRID
from your_ai.step.memory import BUDGET_FRACTION
from your_ai.step.modes import STEP_MODES


def _quick_grid_help() -> str:
    """``--quick`` in words, from the sweep's own grids: the quick grid, batch {2,4,8} x rank {64,128} x ..."""
    def values(key: str) -> str:
        return "{" + ",".join(map(str, QUICK_GRID[key])) + "}"

    def size(grid: dict) -> int:
        return math.prod(len(choices) for choices in grid.values())

    return (f"the quick grid, batch {values('batch_size')} x rank {values('lora_rank')} x layers "
            f"{values('lora_layers')} ({size(QUICK_GRID)} configs), instead of the full one ({size(FULL_GRID)}).")


QUICK_HELP = _quick_grid_help()
MAX_MEMORY_OPTION = click.option(
    "--max-memory", type=click.FloatRange(min=0, min_open=True),
    help=f"Budget in GB (default: {BUDGET_FRACTION:.0%} of the device's memory: GPU memory on CUDA, system memory "
         "elsewhere).")


@click.command()
@click.option("--output", type=click.Path(dir_okay=False),
              help="Where to save the machine info (default: <config dir>/machine.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the machine info as JSON.")
def setup(output, as_json):
    """Detect this machine's hardware (OS, CPU, memory, GPUs, training device) and save it as machine info."""
    from your_ai import hardware
    check_output("--output", output)
    info = hardware.detect_machine()
    path = hardware.save_machine_info(info, output)
    click.echo(json.dumps(info, indent=2) if as_json else hardware.format_machine_info(info))
    click.echo(f"Saved machine info to {path}")


@click.command()
@click.option("--memory", type=float, help="Memory in GB to plan for (default: the detected device's memory).")
@click.option("--batch-size", type=POSITIVE, help="Samples per step (default: train's default for each model).")
@click.option("--lora-rank", type=POSITIVE, help="LoRA rank (default: train's default for each model).")
@click.option("--lora-layers", type=POSITIVE, help="Adapted layers (default: train's default for each model).")
@click.option("--max-seq-length", type=click.IntRange(min=2),
              help="Tokens per sample (default: train's default for each model).")
@click.option("--quantize", type=int, help="4: estimate QLoRA, the decoder linear weights in 4-bit NF4.")
@click.option("--dora", is_flag=True, help="Estimate DoRA adapters (as `train --dora`), in the plain step.")
@click.option("--model", "models", multiple=True, help=f"Estimate this model instead of the presets: {MODEL_KINDS}; "
              "repeat it or give a comma-separated list.")
@ENGINE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def recommend(memory, batch_size, lora_rank, lora_layers, max_seq_length, quantize, dora, models, engine, as_json):
    """List the presets (or the given models) whose estimated LoRA training memory fits 80% of MEMORY, each in
    the run `your-ai train --model MODEL` makes with the same flags (on the MLX engine: within Metal's
    recommended working set when MEMORY is not given).

    Exit code 1 when a given model has no estimate (not available, unreadable config)."""
    from your_ai.fit import recommend as recommend_module
    if memory is not None and memory <= 0:
        fail(f"--memory={memory} must be a positive number of GB")
    try:
        report = recommend_module.recommend_presets(
            memory_gb=memory,
            batch_size=batch_size,
            lora_rank=lora_rank,
            lora_layers=lora_layers,
            seq_length=max_seq_length,
            quantize=quantize,
            dora=dora,
            models=[name.strip() for value in models for name in value.split(",") if name.strip()],
            engine=engine,
        )
    except ValueError as error:  # --quantize 8, not a model name, --engine mlx without MLX
        fail(str(error))
    click.echo(json.dumps(report, indent=2) if as_json else recommend_module.format_recommendation(report))
    sys.exit(1 if any(row["error"] for row in report.get("models", [])) else 0)


def _fit_options(function):
    """The fit-test config options shared by ``benchmark`` and ``optimize``."""
    for option in reversed((
        click.option("--max-seq-length", "--seq-length", "max_seq_length", type=click.IntRange(min=2),
                     help="Tokens per sample, as `train --max-seq-length` (default 1024, or the model's context if "
                          "smaller)."),
        click.option("--grad-checkpoint", is_flag=True, help="Recompute activations in the backward pass."),
        click.option("--step-mode", type=click.Choice(STEP_MODES),
                     default="auto", show_default=True,
                     help="The training step of each fit test, as `train --step-mode`: auto is the fastest that "
                          "fits --max-memory by the estimate."),
        click.option("--device", help="cuda, mps or cpu for the torch engine (default: the best available)."),
        ENGINE_OPTION,
        click.option("--synthetic", is_flag=True, help="Random-weight models of each preset's exact architecture: "
                     "measures the fit without downloading anything."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT_S,
                     show_default=True,
                     help="Seconds per fit test before its process group is killed."),
        click.option("--gpus", type=POSITIVE, default=1, show_default=True,
                     help="Run each fit test on N GPUs of this machine through torchrun (with --device cpu: N CPU "
                          "processes); the peak is per GPU. --batch-size is per process."),
        click.option("--strategy", type=click.Choice(["auto", "ddp", "fsdp"]), default="auto", show_default=True,
                     help="With --gpus: ddp replicates the model on every GPU, fsdp shards it; auto: ddp when the "
                          "model fits one GPU by the estimate, else fsdp."),
        click.option("--quantize", type=int, help="4: fit tests of QLoRA, the decoder linear weights in 4-bit NF4 "
                     "(as `train --quantize 4`)."),
        click.option("--dora", is_flag=True, help="Fit tests of DoRA adapters (as `train --dora`)."),
    )):
        function = option(function)
    return function


@click.command()
@MAX_MEMORY_OPTION
@click.option("--models", help="Comma-separated models to test: presets, hub ids (org/name, from the local cache), "
              "model directories and GGUF files, mixed (default: the five benchmark presets).")
@click.option("--cached", is_flag=True, help="Test every causal language model in the local Hugging Face cache "
              "($HF_HUB_CACHE) instead of the presets.")
@click.option("--fit-test", "--single-model", "fit_test", metavar="MODEL", help="Run one fit test of MODEL in this "
              "process and print one FIT_TEST_RESULT line (what the benchmark runs in each subprocess).")
@click.option("--optimize", is_flag=True, help="Sweep batch x rank x layers for each model that passes.")
@click.option("--quick", is_flag=True, help=f"With --optimize: {QUICK_HELP}")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the results as JSON to FILE.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=DEFAULT_LOG, show_default=True,
              help="Append every event to this JSONL file.")
@click.option("--force", is_flag=True, help="Skip the safety checks (available memory, weights over the budget).")
@click.option("--batch-size", type=POSITIVE, default=FitConfig.batch_size, show_default=True,
              help="Fit-test batch size.")
@click.option("--lora-rank", type=POSITIVE, default=FitConfig.lora_rank, show_default=True, help="Fit-test LoRA rank.")
@click.option("--lora-layers", type=POSITIVE, default=FitConfig.lora_layers, show_default=True,
              help="Fit-test LoRA layers (the last N, clamped to the model).")
@click.option("--steps", type=POSITIVE, default=DEFAULT_STEPS, show_default=True, help="Training steps per fit test.")
@_fit_options
@printed_run_file_options
def benchmark(max_memory, models, cached, fit_test, optimize, quick, output, log_path, force, batch_size,
              lora_rank, lora_layers, steps, max_seq_length, grad_checkpoint, step_mode, device, engine, synthetic, timeout,
              gpus, strategy, quantize, dora):
    """Empirically test which models fit this machine, one subprocess per model.

    Exit code 0 when at least one model passed, 1 when none did.
    """
    try:
        config = FitConfig(batch_size=batch_size, lora_rank=lora_rank, lora_layers=lora_layers, steps=steps,
                           seq_length=max_seq_length, grad_checkpoint=grad_checkpoint, step_mode=step_mode,
                           quantize=quantize, dora=dora)
        device = fit_device(device, engine)
        check_fit_engine(config, device)
    except ValueError as error:  # --grad-checkpoint with --step-mode fast or selective, --quantize 8, --engine
        fail(str(error))
    if fit_test:
        from your_ai.fit.child import run_single

        if gpus > 1:  # the same fit test on N processes, under torchrun
            _check_processes(gpus, device)
            launch_processes(gpus, device, "benchmark")
        sys.exit(run_single(fit_test, max_memory, device, config, synthetic=synthetic, strategy=strategy))

    if quick and not optimize:
        fail("--quick picks the quick grid of --optimize; add --optimize")
    if cached and (models or synthetic):
        fail(f"--cached tests the models in the local cache; leave out {'--models' if models else '--synthetic'}")
    check_output("--log", log_path)
    check_output("--output", output)
    from your_ai.fit.benchmark import run_benchmark
    from your_ai.fit.runner import Stopped

    names = [name.strip() for name in models.split(",") if name.strip()] if models else None
    try:
        report = run_benchmark(
            names, max_memory_gb=max_memory, device=device, config=config, timeout_s=timeout, log_path=log_path,
            output=output, synthetic=synthetic, force=force, optimize=optimize, quick=quick, gpus=gpus,
            strategy=strategy, cached=cached,
        )
    except (KeyError, ValueError) as error:  # not a model name, an unusable --device or setting
        fail(error.args[0] if error.args else str(error))
    except Stopped as stop:  # SIGINT or SIGTERM: the running fit test's process group was killed
        fail_stopped(stop)
    sys.exit(0 if report["recommended"] else 1)


def _check_processes(gpus: int, device: str | None) -> None:
    """``plan.check_processes`` as one line: ``--gpus N`` on the MLX engine, or on too few GPUs."""
    from your_ai.fit.plan import check_processes

    try:
        check_processes(gpus, device)
    except ValueError as error:
        fail(str(error))


@click.command()
@click.option("--model", required=True, help=f"Model: {MODEL_KINDS}.")
@MAX_MEMORY_OPTION
@click.option("--quick", is_flag=True, help=f"Sweep {QUICK_HELP}")
@click.option("--steps", type=POSITIVE, default=SWEEP_STEPS, show_default=True, help="Training steps per config.")
@click.option("--output", type=click.Path(dir_okay=False),
              help="Where to save the hardware profile (default: <config dir>/profiles/<model>.json).")
@_fit_options
@printed_run_file_options
def optimize(model, max_memory, quick, steps, output, max_seq_length, grad_checkpoint, step_mode, device, engine,
             synthetic, timeout, gpus, strategy, quantize, dora):
    """Sweep batch size x LoRA rank x layers for the fastest config that fits; save a hardware profile.

    Exit code 0 when a config fits, 1 when none does or the model is not available.
    """
    check_output("--output", output)
    from your_ai.fit.runner import Stopped
    from your_ai.fit.sweep import run_optimize
    from your_ai.model.errors import ModelResolutionError

    try:
        device = fit_device(device, engine)
        outcome = run_optimize(model, max_memory_gb=max_memory, device=device, quick=quick, steps=steps,
                               timeout_s=timeout, synthetic=synthetic, seq_length=max_seq_length,
                               grad_checkpoint=grad_checkpoint, step_mode=step_mode, output=output, gpus=gpus,
                               strategy=strategy, quantize=quantize, dora=dora)
    except ModelResolutionError as error:
        fail(str(error), code=1)
    except ValueError as error:
        fail(str(error))
    except Stopped as stop:  # SIGINT or SIGTERM: the running fit test's process group was killed
        fail_stopped(stop)
    sys.exit(0 if outcome["best"] else 1)



"""The train command."""

from __future__ import annotations

import signal
import sys

import click

from your_ai.cli.common import (
    ALPHA_OPTION,
    DEVICE_HELP,
    MODEL_KINDS,
    POSITIVE,
    SEED,
    TRUST_REMOTE_CODE_HELP,
    check_output,
    comparison,
    fail,
    fail_stopped,
    launch_processes,
    load_inference_model,
    print_answers,
)
from your_ai.cli.run_file import run_file_options
from your_ai.files import writing
from your_ai.hardware import ENGINES, MLX_INSTALL
from your_ai.step.memory import BUDGET_FRACTION
from your_ai.step.modes import STEP_MODES
from your_ai.train.defaults import (
    ATTN_IMPLEMENTATIONS,
    DEFAULTS,
    RULES,
    WARMUP_FRACTION,
)
from your_ai.train.sinks import (
    DEFAULT_PROJECT,
    REPORT_TO,
    TRACKERS_INSTALL,
    check_installed,
    parse_report_to,
)

DEMO_SAVE_EVERY, SAVE_EVERY = RULES[("demo", "cpu")].save_every, RULES[("large", "gpu")].save_every


@click.command()
@click.option("--model", help=f"Model: {MODEL_KINDS} (default: smollm2-135m, "
              "SmolLM2-135M-Instruct; `tiny` is a random-weight model for tests).")
@click.option("--data", type=click.Path(), help="JSONL file, or directory with train.jsonl (+ val.jsonl) "
              "(default: the built-in demo corpus).")
@click.option("--output-dir", type=click.Path(file_okay=False), help="The run's output directory: "
              "the adapter, checkpoints, metrics (default: models/distrust-<model>).")
@click.option("--batch-size", type=POSITIVE, help="Samples per micro-batch (default: by model size and device, see docs/training.md).")
@click.option("--grad-accum", type=POSITIVE, help=f"Micro-batches per optimizer step (default {DEFAULTS['grad_accum']}).")
@click.option("--lora-rank", type=POSITIVE, help="LoRA rank (default: by model size and device).")
@click.option("--lora-alpha", type=float, help="LoRA alpha (default 2 x rank).")
@click.option("--lora-layers", type=POSITIVE, help="Adapt the last N decoder layers (default: by model size and device; clamped to the model).")
@click.option("--dora/--no-dora", default=None, help="DoRA adapters (weight-decomposed LoRA): a trained magnitude "
              f"per output feature of each adapted projection; the plain step, either engine (default: "
              f"{'on' if DEFAULTS['dora'] else 'off'}; see docs/dora.md).")
@click.option("--learning-rate", type=float, help="Peak learning rate (default: by model size and device).")
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Linear warmup steps before the cosine decay "
              f"(default: {WARMUP_FRACTION:.0%} of the steps).")
@click.option("--max-steps", type=POSITIVE, help="Optimizer steps (default: from the epochs over the data that the model size and device give).")
@click.option("--max-grad-norm", type=float, help=f"Gradient clipping norm (default {DEFAULTS['max_grad_norm']}).")
@click.option("--max-seq-length", type=click.IntRange(min=2), help="Truncate samples to N tokens (default: by model size and device).")
@click.option("--weight-decay", type=float, help=f"AdamW weight decay (default {DEFAULTS['weight_decay']}).")
@click.option("--distrust-mode", type=click.Choice(["weighted", "additive"]),
              help="weighted: per-sample CE weights from the distrust value (default); additive: CE + lambda * d, "
                   "which changes no gradient.")
@ALPHA_OPTION
@click.option("--lambda-weight", type=float, help=f"Strength of the distrust term (default {DEFAULTS['lambda_weight']}; "
              "[0, 1] when weighted).")
@click.option("--save-every", type=POSITIVE, help=f"Checkpoint every N steps (default {SAVE_EVERY}; tiny: "
              f"{DEMO_SAVE_EVERY}).")
@click.option("--keep-last", type=POSITIVE, help=f"Checkpoints to keep (default {DEFAULTS['keep_last']}).")
@click.option("--save-best", is_flag=True, help="Keep the adapter with the lowest validation loss in best/ "
              "(needs val.jsonl).")
@click.option("--eval-every", type=POSITIVE, help="Validation every N steps (default: --save-every).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --output-dir that loads.")
@click.option("--overwrite", is_flag=True, help="Start over in an --output-dir holding an earlier training run: "
              "its adapter, checkpoints, metrics and best/ are removed (a directory holding anything else is refused).")
@click.option("--max-memory", type=float, help="Stop (after saving a checkpoint, exit code 4) when the measured "
              f"peak memory in GB goes above this (default: {BUDGET_FRACTION:.0%} of the device's memory); --step-mode auto "
              "chooses for this budget.")
@click.option("--memory-report-interval", type=POSITIVE, help=f"Log metrics every N steps "
              f"(default {DEFAULTS['memory_report_interval']}).")
@click.option("--metrics-file", type=click.Path(dir_okay=False), help="Metrics JSONL (default: <output-dir>/metrics.jsonl).")
@click.option("--report-to", help="Where the metrics go besides <output-dir>/metrics.jsonl: a comma list of "
              f"{', '.join(REPORT_TO)}, or none (default {DEFAULTS['report_to']}: events in <output-dir>/runs); "
              f"wandb and trackio need {TRACKERS_INSTALL}. See docs/trackers.md.")
@click.option("--project", help=f"The wandb / trackio project (default: WANDB_PROJECT for wandb, else {DEFAULT_PROJECT}).")
@click.option("--run-name", help="The wandb / trackio run name (default: the output directory's name).")
@click.option("--no-tensorboard", is_flag=True, help="Leave TensorBoard out of --report-to (no events in "
              "<output-dir>/runs).")
@click.option("--grad-checkpoint", is_flag=True, help="Recompute activations in the backward pass to save memory "
              "(the small step mode).")
@click.option("--step-mode", type=click.Choice(STEP_MODES),
              help="auto: the fastest step that fits --max-memory by the estimate (default); fast: nothing "
                   "recomputed; selective: the fewest layers recomputed that fit; small: every adapted layer "
                   "recomputed; plain: the Hugging Face forward through the full logits.")
@click.option("--packing/--no-packing", default=None,
              help="Pack several records into each row of --max-seq-length tokens, with no attention across records "
                   "and each record's own distrust weight; --batch-size then counts rows (default: on when it would compute "
                   "enough fewer tokens to pay, see docs/training.md; the run says which and why).")
@click.option("--attn-implementation", type=click.Choice(["auto", *ATTN_IMPLEMENTATIONS]),
              help="The model's attention kernel (transformers' attn_implementation): sdpa, flex_attention (CUDA; "
                   "packed rows as block masks) or eager; auto (default): see docs/training.md#packing.")
@click.option("--seed", type=SEED, help=f"Seed for LoRA init and data order, 0 to 2^64-1 (default {DEFAULTS['seed']}).")
@click.option("--device", help=DEVICE_HELP)
@click.option("--engine", type=click.Choice(ENGINES),
              help="torch: PyTorch (CUDA, MPS, CPU); mlx: MLX through mlx-lm, for Apple Silicon "
                   f"({MLX_INSTALL}); auto (default): mlx on Apple Silicon when MLX is installed, else torch. "
                   "A resumed run keeps its engine.")
@click.option("--trust-remote-code", is_flag=True, help=TRUST_REMOTE_CODE_HELP)
@click.option("--profile", "profile_file", type=click.Path(dir_okay=False),
              help="Apply a hardware profile saved by `your-ai optimize` (batch size, LoRA rank, alpha and "
              "layers, --max-seq-length, --quantize).")
@click.option("--auto-optimize", is_flag=True, help="Apply this model's saved hardware profile; "
              "run the quick optimize sweep first when there is none.")
@click.option("--gpus", type=POSITIVE, help="Train data-parallel on N GPUs of this machine: runs this command under "
              "torchrun with N processes (with --device cpu: N CPU processes). --batch-size is per process.")
@click.option("--strategy", type=click.Choice(["auto", "ddp", "fsdp"]),
              help="Data-parallel strategy under torchrun or --gpus: ddp replicates the model on every GPU; "
                   "fsdp shards the base weights and the LoRA parameters over the processes; auto (default): "
                   "ddp when the model fits one GPU by the estimate, else fsdp.")
@click.option("--quantize", type=int, help="4: QLoRA, the base model's decoder linear weights in 4-bit NF4 "
              "(torchao) under full-precision LoRA adapters; about a quarter of the weights' memory.")
@run_file_options
def train(no_tensorboard, profile_file, auto_optimize, gpus, **options):
    """Fine-tune a model with LoRA under the Empirical Distrust objective.

    With no --model and no --data it trains SmolLM2-135M-Instruct on the demo corpus (a few minutes on a CPU)
    and shows one prompt answered by the base and the fine-tuned model.
    Under `torchrun --nproc_per_node N -m your_ai train ...` (or with --gpus N) it trains data-parallel.
    With --config FILE it takes its options from a run file (the run writes one, run.yaml, beside the adapter).
    """
    print_config = options.pop("print_config")
    check_output("--output-dir", options["output_dir"], directory=True)
    check_output("--metrics-file", options["metrics_file"])
    _check_trackers(options["report_to"], no_tensorboard)
    from your_ai.data.records import DataError
    from your_ai.model.errors import ModelResolutionError
    from your_ai.model.quantize import QuantizationError
    from your_ai.train.args import (
        MemoryLimitExceeded,
        TrainingArgs,
        TrainingArgsError,
        TrainingError,
    )
    from your_ai.train.loop import train as run_training
    from your_ai.train.outputs import CheckpointError
    from your_ai.train.parallel import DistributedError

    if profile_file and auto_optimize:
        fail("--profile and --auto-optimize both choose the hardware profile; give one of them")
    if gpus is not None and gpus > 1:
        _check_engine_processes(options["engine"], gpus)  # also for --print-config: a run file that would run
        if not print_config:
            launch_processes(gpus, options["device"], "train")
    options = _with_profile(options, profile_file, auto_optimize, say=lambda line: click.echo(line, err=print_config))
    args = TrainingArgs(tensorboard=not no_tensorboard, **options)
    try:
        if print_config:  # the run file as planned: the settings the run starts with
            from your_ai.train.run_file import planned_run_file

            return click.echo(planned_run_file(args, gpus or 1), nl=False)
        with writing(args.with_defaults().output_dir):
            result = run_training(args)
    except TrainingArgsError as error:
        fail(str(error))
    except MemoryLimitExceeded as error:
        fail(str(error), code=4)
    except (DataError, ModelResolutionError, CheckpointError, TrainingError, DistributedError,
            QuantizationError) as error:
        fail(str(error), code=1)
    except ValueError as error:  # an unusable --device, a distrust input out of range
        fail(str(error))
    if result.stopped_by:  # the run stops: a further Ctrl-C must not kill the interpreter while it exits
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
    if result.rank != 0:  # data-parallel: rank 0 reports
        sys.exit(result.exit_code)
    if result.already_finished:
        click.echo(f"{result.output_dir} already finished {result.steps} of {result.max_steps} steps; nothing to "
                   f"do. A run keeps its --max-steps: to train more, start a new run (--overwrite, or another "
                   f"--output-dir)")
        return
    if result.stopped_by:
        click.echo(f"Stopped by {result.stopped_by} at step {result.steps} of {result.max_steps}; checkpoint saved in "
                   f"{result.output_dir / 'checkpoints'}")
        click.echo(f"Continue with: {result.resume_command}")
        sys.exit(result.exit_code)
    if result.stopped_early:
        click.echo(f"Stopped at step {result.steps}; continue with --resume --output-dir {result.output_dir}")
        return
    click.echo(f"Trained {result.steps} steps in {result.elapsed_s:.1f} s; peak memory {result.peak_memory_gb:.2f} GB")
    click.echo(f"Adapter saved to {result.output_dir}")
    if options["data"] is None:  # the demo: show what the fine-tuning changed
        _show_demo_comparison(result.output_dir, options["device"])
    click.echo(f"Try it: your-ai generate --checkpoint {result.output_dir} --prompt \"...\" --compare")


def _check_engine_processes(engine: str | None, gpus: int) -> None:
    """``--gpus N`` is refused before any process starts when the run trains in MLX (one process)."""
    from your_ai.hardware import pick_engine
    from your_ai.train.args import check_mlx_processes

    try:
        if pick_engine(engine) == "mlx":
            check_mlx_processes(gpus, f"--gpus {gpus}")
    except ValueError as error:  # MLX asked for and not installed; --gpus on MLX (TrainingArgsError)
        fail(str(error))


def _check_trackers(report_to, no_tensorboard) -> None:
    """Before anything heavy is imported: --report-to's names, and a tracker asked for that is not installed."""
    try:
        check_installed(parse_report_to(report_to, not no_tensorboard))
    except ValueError as error:
        fail(str(error))


def _with_profile(options: dict, profile_file: str | None, auto_optimize: bool, say) -> dict:
    """``options`` with the hardware profile of --profile or --auto-optimize filling the settings still unset."""
    from your_ai.fit import profiles
    from your_ai.fit import sweep as optimize
    from your_ai.fit.runner import Stopped

    try:
        chosen = optimize.profile_for_training(
            options["model"], profile=profile_file, auto=auto_optimize, max_memory_gb=options["max_memory"],
            device=options["device"], say=say, engine=options["engine"],
            run={key: options[key] for key in ("max_seq_length", "quantize", "dora")},
        )
        if chosen:
            options, note = profiles.apply_profile(options, *chosen)
            say(note)
    except ValueError as error:
        fail(str(error), code=1)
    except Stopped as stop:  # SIGINT or SIGTERM during --auto-optimize's sweep: its fit test was killed
        fail_stopped(stop)
    return options


def _show_demo_comparison(checkpoint, device) -> None:
    """The demo prompt answered greedily by the base model and by the adapter just trained."""
    from your_ai.eval import inference
    from your_ai.train.args import DEMO_PROMPT

    im = load_inference_model(None, checkpoint, device, False)
    try:
        result = inference.compare(im, DEMO_PROMPT, max_tokens=48, temperature=0.0, chat=None)
    except inference.InferenceError as error:
        fail(str(error), code=1)
    click.echo(f"Prompt: {DEMO_PROMPT}")
    print_answers(im, comparison(im, result, 0.0), None, 0.0)



"""The fit test: one short LoRA training run in this process -> exactly one result line.

``your-ai benchmark --fit-test MODEL`` runs ``run_fit_test`` and prints::

    FIT_TEST_RESULT:{"preset": ..., "success": ..., "status": ..., ...}

on stdout (and nothing else there). While it works it writes ``FIT_TEST_PHASE:<phase>`` lines (resolving,
loading, step k/N) to stderr, which the benchmark shows as progress.

The fit test trains as ``train`` does: it loads the model with ``train``'s loader (the training dtype, PEFT
LoRA on the last N layers, clamped to the model's depth), chooses and applies the step mode as ``train``
does (``--step-mode``, by default ``auto``, the fastest mode whose estimate fits the budget), and runs N
steps of ``train``'s own optimizer step (``train.step.optimizer_step``: gradient clipping, AdamW, a
warm-up-and-cosine schedule) on random token ids, timing each. The result names the mode in
``config.step_mode``, its reason in ``notes``, and ``estimate_gb`` is that mode's estimate. The peak is a
peak: the device's high-water mark from the start of this process (model weights included) and the
process's peak RSS, never memory read after the work.

It classifies what it can see itself, from exception types: ``torch.OutOfMemoryError`` or ``MemoryError``
-> ``oom``; ``ModelNotAvailableError`` -> ``not_available`` (with the ``hf download`` command); a measured
peak over the budget -> ``over_budget``; anything else -> ``error`` with the real message. What it cannot
report (killed by a signal, hung) is classified by the parent (``your_ai.fit.runner``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace

from your_ai.fit.faults import injected_fault, trigger_fault
from your_ai.fit.plan import (
    LEARNING_RATE,
    FitConfig,
    FitTest,
    fit_strategy,
    resolve_tested_model,
    step_mode_for,
)
from your_ai.fit.result import (
    PEAK_FIELDS,
    FitResult,
    emit_result,
    mlx_out_of_memory,
    phase,
    record_step_times,
)
from your_ai.fit.watchdog import watch_parent
from your_ai.model.architecture import architecture_from_config
from your_ai.model.presets import PRESETS, params_label
from your_ai.step import memory
from your_ai.step.modes import runs_plain
from your_ai.train.defaults import DEFAULTS

WARMUP_STEPS = 1


@dataclass
class _Session:
    """A fit test under way in this process: the test (device and budget settled), how the processes share
    it (``train.parallel.Strategy``: one process, ddp or fsdp), and the peak memory since it started."""

    test: FitTest
    parallel: object  # your_ai.train.parallel.Strategy
    peak: memory.PeakMemory

    @property
    def sharded(self) -> bool:
        return self.parallel.sharded


def run_fit_test(model: str, max_memory_gb: float | None = None, device: str | None = None,
                 config: FitConfig = FitConfig(), *, synthetic: bool = False, strategy: str | None = None) -> FitResult:
    """Run one fit test of ``model`` (preset, hub id or directory) in this process; its result.

    Started by torchrun (``--gpus N``), every process runs it on its own GPU (or CPU) with the model
    replicated (``ddp``) or sharded (``fsdp``; ``strategy`` auto: ``plan.fit_strategy``); the peaks become
    the largest of all processes, and ``processes``, ``rank`` and ``strategy`` say how it ran."""
    started = time.monotonic()
    test = FitTest(model, device, config, max_memory_gb, synthetic, strategy=strategy)
    result = test.result()
    if device == memory.MLX_DEVICE:
        budget = _run_on_mlx(test, result)
    else:
        budget = _run_on_torch(test, result)
    result.duration_s = round(time.monotonic() - started, 3)
    if result.status == "pass" and budget is not None and result.peak_memory_gb > budget:
        result.finish("over_budget", f"peak {result.peak_memory_gb:.2f} GB is over the {budget:.2f} GB budget")
    result.success = result.status == "pass"
    return result


def _run_on_torch(test: FitTest, result: FitResult) -> float | None:
    """The fit test on the torch engine (under torchrun: this process's part); its budget."""
    session = None
    try:
        session = _start(test, result)
        _classified_run(session, result)
    except Exception as error:  # noqa: BLE001 -- any other failure is reported with its real message
        result.finish("error", f"{type(error).__name__}: {error}")
    finally:
        if session is not None:
            _record_peaks(session.peak, result)
    if session is not None and session.parallel.distributed:
        _across_processes(session, result)
    return session.test.max_memory_gb if session else test.max_memory_gb


def _run_on_mlx(test: FitTest, result: FitResult) -> float:
    """The fit test on the MLX engine (``fit.mlx_child``): MLX's peak from the start, Metal's (or the CPU
    build's) allocation failures classified as oom; its budget."""
    from your_ai.fit.mlx_child import train_on_mlx
    from your_ai.model.errors import ModelNotAvailableError

    budget = test.max_memory_gb
    if budget is None:
        budget = memory.default_budget_gb(memory.MLX_DEVICE)
        result.max_memory_gb = round(budget, 3)
    test = replace(test, max_memory_gb=budget)
    peak = memory.PeakMemory(memory.MLX_DEVICE)
    peak.reset()
    try:
        train_on_mlx(test, result, peak)
    except ModelNotAvailableError as error:
        _not_available(test, result, error)
    except Exception as error:  # noqa: BLE001 -- any other failure is reported with its real message
        if isinstance(error, MemoryError) or mlx_out_of_memory(str(error)):
            result.finish("oom", f"{type(error).__name__}: {_first_line(error)}")
        else:
            result.finish("error", f"{type(error).__name__}: {error}")
    finally:
        _record_peaks(peak, result)
    return budget


def _start(test: FitTest, result: FitResult) -> _Session:
    """Settle the device (joining the other processes under torchrun) and the budget; start the peak."""
    from your_ai.hardware import pick_device
    from your_ai.train import parallel

    device = result.device = pick_device(test.device)
    world, device = parallel.start(device)  # under torchrun: join the other processes, on this rank's GPU
    memory.use_expandable_segments(device)
    if world.distributed:
        result.processes, result.rank = world.size, world.rank
    budget = test.max_memory_gb
    if budget is None:
        budget = memory.default_budget_gb(device)
        result.max_memory_gb = round(budget, 3)
    peak = memory.PeakMemory(device)
    peak.reset()  # from the start: the peak includes the model's weights
    return _Session(replace(test, device=device, max_memory_gb=budget), parallel.Strategy(world, device), peak)


def _classified_run(session: _Session, result: FitResult) -> None:
    """Resolve and train, turning what the fit test can see itself into its status."""
    import torch

    from your_ai.model.errors import ModelNotAvailableError

    try:
        _resolve_and_train(session, result)
    except ModelNotAvailableError as error:
        _not_available(session.test, result, error)
    except (torch.OutOfMemoryError, MemoryError) as error:
        result.finish("oom", f"{type(error).__name__}: {_first_line(error)}")
    except RuntimeError as error:
        if not _is_mps_out_of_memory(error):
            raise
        result.finish("oom", f"{type(error).__name__}: {_first_line(error)}")


def _resolve_and_train(session: _Session, result: FitResult) -> None:
    from your_ai.model.resolve import model_shape

    test = session.test
    phase("resolving")
    resolve_tested_model(test, result)
    fault = injected_fault(test.model, test.config)
    if fault:
        trigger_fault(fault)
    if session.parallel.distributed:
        architecture = model_shape(test.model, synthetic=test.synthetic).architecture
        strategy = fit_strategy(test.strategy, architecture, test.device, test.config, test.max_memory_gb,
                                session.parallel.world.size)
        session.test = replace(test, strategy=strategy)
        session.parallel = replace(session.parallel, sharded=strategy == "fsdp")
        result.strategy = strategy
    _train(session, result)


def _train(session: _Session, result: FitResult) -> None:
    """Load as ``train`` loads, prepare its step, run the steps and report their speed."""
    phase("loading")
    step_loss, architecture = _load(session, result)
    seq_length = session.test.config.seq_length_for(architecture)
    _prepare_step(session, step_loss, architecture, seq_length, result)
    times = _run_steps(session, step_loss, _random_batch(session.test, architecture.vocab_size, seq_length), result)
    record_step_times(result, times, session.test.config.batch_size * session.parallel.world.size * seq_length)
    phase("done")


def _load(session: _Session, result: FitResult):
    """The model with its LoRA adapters, loaded (and sharded under fsdp) as ``train`` loads it: the step's
    loss module (its objective is set with the batch) and the model's architecture."""
    import torch

    from your_ai.train.loss import StepLoss
    from your_ai.train.setup import load_for_training

    test, loaded = session.test, time.monotonic()
    training = load_for_training(
        test.model, test.config.lora, test.device,
        grad_checkpoint=test.config.grad_checkpoint and runs_plain(test.config.step_mode, test.config.dora),
        synthetic=test.synthetic, quantize=test.config.quantize,
        on_meta=session.sharded and not test.config.quantize,  # 4-bit weights are built whole, then sharded
    )
    step_loss = StepLoss(training.model, None, False)  # the objective and the head are set with the step mode
    if session.sharded:
        if test.device.startswith("cuda"):  # building the skeleton passed each empty tensor through the GPU's cache
            torch.cuda.empty_cache()
            session.peak.reset()
        session.parallel.load(step_loss, None if test.synthetic else training.resolved.path, seed=0)
    session.peak.sample()
    result.load_time_s = round(time.monotonic() - loaded, 3)
    architecture = architecture_from_config(training.model.config.to_dict())
    result.config.update(seq_length=test.config.seq_length_for(architecture),
                         lora_layers=min(test.config.lora_layers, architecture.num_hidden_layers),
                         dtype=str(training.dtype).replace("torch.", ""))
    result.architecture = training.architecture_name
    result.notes.extend(training.notes)
    result.parameter_count = architecture.parameter_count()
    if result.params is None:
        result.params = params_label(result.parameter_count)
    return step_loss, architecture


def _prepare_step(session: _Session, step_loss, architecture, seq_length: int, result: FitResult) -> None:
    """Choose and apply the step mode as ``train`` does, within the budget (under fsdp, plus what sharding
    saves: the mode's estimate holds the whole model); the estimate is per process."""
    from your_ai.train.setup import apply_step_mode

    test = session.test
    saved = memory.sharding_saves_gb(architecture, test.device, session.parallel.world.size, test.config.quantize) \
        if session.sharded else 0.0
    prepared = apply_step_mode(step_loss.model, test.config.step_mode, test.config.lora, test.config.batch_size,
                               seq_length, test.device, test.max_memory_gb + saved,
                               grad_checkpoint=test.config.grad_checkpoint, quantize=test.config.quantize)
    step_loss.fast_head, step_loss.chunk_tokens = prepared.fast_head, prepared.chunk_tokens
    result.config["step_mode"] = prepared.mode.name
    result.estimate_gb = round(prepared.mode.estimate_gb - saved, 3) if session.sharded else prepared.mode.estimate_gb
    result.notes.append(f"step mode {prepared.mode.reason}")
    result.notes.extend(prepared.notes)


def _random_batch(test: FitTest, vocab_size: int, seq_length: int) -> dict:
    """A batch of random token ids with random authority weights and provenance entropies, on the device."""
    import torch

    generator = torch.Generator().manual_seed(0)
    shape = (test.config.batch_size, seq_length)
    input_ids = torch.randint(0, vocab_size, shape, generator=generator)
    return {
        "input_ids": input_ids.to(test.device),
        "attention_mask": torch.ones(shape, dtype=torch.long, device=test.device),
        "labels": input_ids.to(test.device),
        "auth_weight": (torch.rand(test.config.batch_size, generator=generator) * 0.99).to(test.device),
        "prov_entropy": (torch.rand(test.config.batch_size, generator=generator) * 8.0).to(test.device),
    }


def _run_steps(session: _Session, step_loss, batch: dict, result: FitResult) -> list[float]:
    """Run the fit test's steps through ``train``'s optimizer step; each step's seconds."""
    from transformers import get_cosine_schedule_with_warmup

    from your_ai.train.plan import Objective
    from your_ai.train.setup import build_optimizer
    from your_ai.train.step import MicroBatch, NonFiniteGradient, optimizer_step

    test, model = session.test, step_loss.model
    step_loss.objective = Objective.from_dataset("weighted", 2.7, 1.0, batch["auth_weight"].tolist(),
                                                 batch["prov_entropy"].tolist())
    step_loss = session.parallel.wrap(step_loss)  # several processes with whole models: DDP; else as it is
    optimizer = build_optimizer(model, LEARNING_RATE)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(WARMUP_STEPS, test.config.steps - 1), test.config.steps)
    times = []
    for step in range(1, test.config.steps + 1):
        phase(f"step {step}/{test.config.steps}")
        began = time.perf_counter()
        try:
            optimizer_step(step_loss, [MicroBatch(batch)], optimizer, scheduler, DEFAULTS["max_grad_norm"])
        except NonFiniteGradient as error:
            result.notes.append(f"step {step}: {error}")
        _synchronize(test.device)
        times.append(time.perf_counter() - began)
        session.peak.sample()
    return times


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device == "mps":
        torch.mps.synchronize()


# ---------------------------------------------------------------------------- what the result says

def _across_processes(session: _Session, result: FitResult) -> None:
    """A fit test on several processes: a process that failed says which it is (it reports for itself; the
    others may be waiting for it in a collective). When this one passed, each peak becomes the largest of
    all processes (the per-GPU peak), which rank 0 reports; ``run_single`` then leaves the process group."""
    world = session.parallel.world
    where = f"process {world.rank} of {world.size}"
    if result.status != "pass":
        result.error = f"{result.error} ({where})"
        return
    try:
        for name in PEAK_FIELDS:
            if getattr(result, name) is not None:
                setattr(result, name, round(session.parallel.all_max(getattr(result, name)), 3))
    except Exception as error:  # noqa: BLE001 -- another process failed; its own result tells why
        result.finish("error", f"lost the other processes while gathering the peaks: "
                               f"{type(error).__name__}: {_first_line(error)} ({where})")


def _record_peaks(peak: memory.PeakMemory, result: FitResult) -> None:
    try:
        device_peak = peak.device_peak_gb()
    except Exception as error:  # noqa: BLE001 -- a broken device after a failure must not hide the result
        device_peak = None
        result.notes.append(f"device peak unavailable: {error}")
    host_peak = memory.process_peak_rss_gb()
    result.peak_device_gb = None if device_peak is None else round(device_peak, 3)
    result.peak_host_gb = round(host_peak, 3)
    result.peak_memory_gb = round(device_peak if device_peak is not None else host_peak, 3)


def _not_available(test: FitTest, result: FitResult, error) -> None:
    result.finish("not_available", str(error))
    result.download_command = error.download_command
    _estimate_from_preset(test, result)


def _estimate_from_preset(test: FitTest, result: FitResult) -> None:
    """A preset that is not on this machine: the step mode and estimate of its known shape."""
    preset = PRESETS.get(test.model)
    if preset is None:
        return
    mode = step_mode_for(preset.architecture, test.device, test.config, test.max_memory_gb)
    result.config["step_mode"] = mode.name
    result.estimate_gb = mode.estimate_gb


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _is_mps_out_of_memory(error: RuntimeError) -> bool:
    """Apple's MPS backend reports exhaustion as a RuntimeError with this message."""
    return str(error).startswith("MPS backend out of memory")


# ---------------------------------------------------------------------------- the command

def run_single(model: str, max_memory_gb: float | None, device: str | None, config: FitConfig,
               *, synthetic: bool = False, strategy: str | None = None) -> int:
    """``benchmark --fit-test``: run the fit test, print its one result line; exit code 0 on a pass.

    Under torchrun rank 0 prints the result of all processes; another process prints only its own failure."""
    watch_parent()
    result = run_fit_test(model, max_memory_gb, device, config, synthetic=synthetic, strategy=strategy)
    if not result.rank or result.status not in ("pass", "over_budget"):  # rank 0, or its own failure
        emit_result(result)
    code = 0 if result.success else 1
    if result.processes > 1:
        _leave(code, together=result.status in ("pass", "over_budget"))
    return code


def _leave(code: int, together: bool) -> None:
    """End a process of a fit test on several at once, after the others when all got as far (``together``):
    tearing the process group down (or letting the interpreter do it) while another process exits can abort
    this one, and a failed process must not wait for the others."""
    import torch.distributed as dist

    if together and dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

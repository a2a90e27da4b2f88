"""The fit probe: one short LoRA training run in this process -> exactly one result line.

``your-ai benchmark --single-model MODEL`` runs ``run_probe`` and prints::

    BENCHMARK_RESULT:{"preset": ..., "success": ..., "status": ..., ...}

on stdout (and nothing else there). While it works it writes ``BENCHMARK_PHASE:<phase>``
lines (resolving, loading, step k/N) to stderr, which the benchmark shows as progress.

The probe loads the model as ``train`` does (``train.load_for_training``: the training dtype,
PEFT LoRA on the last N layers, clamped to the model's depth), chooses and applies the step
mode as ``train`` does (``train.apply_step_mode``: ``--step-mode``, by default ``auto``, the
fastest mode whose estimate fits the budget), builds AdamW with ``train.build_optimizer`` and
runs N steps of ``train.compute_loss`` on random token ids. The result names the mode in
``config.step_mode``, its reason in ``notes``, and ``estimate_gb`` is that mode's estimate.
The peak is a peak: the device's high-water mark from the start of this process (model
weights included) and the process's peak RSS, never memory read after the work.

It classifies what it can see itself, from exception types: ``torch.OutOfMemoryError`` or
``MemoryError`` -> ``oom``; ``ModelNotAvailableError`` -> ``not_available`` (with the
``hf download`` command); a measured peak over the budget -> ``over_budget``; anything else
-> ``error`` with the real message. What it cannot report (killed by a signal, hung) is
classified by the parent (``your_ai.fit.benchmark``).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

from your_ai.step import memory
from your_ai.model.architecture import Architecture, architecture_from_config
from your_ai.model.lora import LoraSettings
from your_ai.model.presets import PRESETS, params_label
from your_ai.model.quantize import check_bits
from your_ai.step.modes import PLAIN_HEAD_MODEL_TYPES, STEP_MODES, StepMode, mode_estimate, select_step_mode

RESULT_PREFIX = "BENCHMARK_RESULT:"
PHASE_PREFIX = "BENCHMARK_PHASE:"

# Test-only fault injection: makes the probe fail on purpose so the benchmark's handling of
# crashes, kills, out-of-memory errors and hangs can be tested without a machine that fails.
FAULT_ENV = "YOUR_AI_PROBE_FAULT"
FAULT_KINDS = ("segfault", "sigkill", "oom", "error", "exit", "sleep")

# Set by the benchmark to its own pid in each fit test's environment: the fit test ends when that process is gone.
PARENT_ENV = "YOUR_AI_PROBE_PARENT"
PARENT_POLL_S = 0.2

STATUSES = ("pass", "oom", "over_budget", "not_available", "error", "timeout", "crashed")

LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class FitConfig:
    """What one probe trains: the benchmark's fixed conservative config by default."""

    batch_size: int = 2
    lora_rank: int = 64
    lora_layers: int = 16
    steps: int = 5
    seq_length: int | None = None  # None: 1024, or the model's context if smaller
    grad_checkpoint: bool = False
    step_mode: str = "auto"  # your_ai.step.modes.STEP_MODES; auto: the fastest that fits the budget
    quantize: int | None = None  # 4: QLoRA, NF4 decoder linears (your_ai.model.quantize)

    def __post_init__(self) -> None:
        for name in ("batch_size", "lora_rank", "lora_layers", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.seq_length is not None and self.seq_length < 2:
            raise ValueError(f"seq_length={self.seq_length!r} must be at least 2")
        if self.step_mode not in STEP_MODES:
            raise ValueError(f"step_mode={self.step_mode!r} must be one of {', '.join(STEP_MODES)}")
        if self.grad_checkpoint and self.step_mode in ("fast", "selective"):
            raise ValueError(f"--grad-checkpoint recomputes every layer; it cannot go with --step-mode "
                             f"{self.step_mode} (use auto, small or plain)")
        check_bits(self.quantize)

    def result_config(self) -> dict:
        """The ``config`` of a result: as asked (the probe fills in what it used: sequence, dtype, ...)."""
        return {
            "batch_size": self.batch_size, "lora_rank": self.lora_rank, "lora_layers": self.lora_layers,
            "seq_length": self.seq_length, "steps": self.steps, "dtype": None,
            "grad_checkpoint": self.grad_checkpoint, "step_mode": self.step_mode, "quantize": self.quantize,
        }

    def cli_args(self) -> list[str]:
        """The ``benchmark --single-model`` options that reproduce this config."""
        args = [
            "--batch-size", str(self.batch_size), "--lora-rank", str(self.lora_rank),
            "--lora-layers", str(self.lora_layers), "--steps", str(self.steps),
        ]
        if self.seq_length is not None:
            args += ["--seq-length", str(self.seq_length)]
        if self.grad_checkpoint:
            args.append("--grad-checkpoint")
        if self.step_mode != "auto":
            args += ["--step-mode", self.step_mode]
        if self.quantize:
            args += ["--quantize", str(self.quantize)]
        return args


def new_result(model: str, device: str | None, config: FitConfig, synthetic: bool, max_memory_gb: float | None, *,
               preset=None, status: str = "error", error: str | None = None, estimate_gb: float | None = None) -> dict:
    """A fit test's result before it is measured: what the probe fills in, and what the benchmark
    reports for a test that gave no result of its own (timeout, crash, over budget before loading).
    ``preset``: the model's preset (default: the preset named ``model``, if any)."""
    preset = preset or PRESETS.get(model)
    return {
        "model": model,
        "preset": preset.name if preset else None,
        "model_name": preset.hub_id if preset else model,
        "params": preset.params if preset else None,
        "success": False,
        "status": status,
        "error": error,
        "peak_memory_gb": None,
        "peak_device_gb": None,
        "peak_host_gb": None,
        "step_time_s": None,
        "tokens_per_s": None,
        "estimate_gb": estimate_gb,
        "max_memory_gb": None if max_memory_gb is None else round(max_memory_gb, 3),
        "device": device,
        "config": config.result_config(),
        "synthetic": synthetic,
        "processes": 1,
        "strategy": None,
        "notes": [],
        "download_command": None,
    }


def phase(name: str) -> None:
    """Tell the parent what the probe is doing (one stderr line)."""
    print(f"{PHASE_PREFIX}{name}", file=sys.stderr, flush=True)


def emit_result(result: dict) -> None:
    """Print the one machine-readable result line."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def parse_result_line(text: str) -> dict | None:
    """The result a probe printed in ``text`` (its stdout), or None if it printed none. A fit test on
    several processes prints rank 0's result and the result of each rank that failed: they are merged
    (``merge_results``)."""
    found = []
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                found.append(json.loads(line[len(RESULT_PREFIX):]))
            except json.JSONDecodeError:
                continue
    return merge_results(found)


# Which rank's result tells what happened: a rank's own out-of-memory error is the cause, the
# lost connection another rank then reports is its symptom.
MERGE_ORDER = ("oom", "over_budget", "not_available", "crashed", "timeout", "error", "pass")


def merge_results(results: list[dict]) -> dict | None:
    """One result from the results of several ranks: the most telling status (``MERGE_ORDER``),
    with the largest peaks of all."""
    if len(results) <= 1:
        return results[0] if results else None
    rank = {status: index for index, status in enumerate(MERGE_ORDER)}
    merged = dict(min(results, key=lambda r: rank.get(r.get("status"), len(MERGE_ORDER))))
    for key in ("peak_memory_gb", "peak_device_gb", "peak_host_gb"):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            merged[key] = max(values)
    return merged


# ---------------------------------------------------------------------------- fault injection

def injected_fault(model: str, config: FitConfig, environ=os.environ) -> str | None:
    """The test-only fault ``YOUR_AI_PROBE_FAULT`` asks for in this probe, if any.

    The value is a comma-separated list of ``FAULT`` or ``FAULT@SELECTOR``; the first entry
    whose selector matches applies. FAULT: ``segfault`` (die by SIGSEGV), ``sigkill`` (die by
    SIGKILL, as the OS out-of-memory killer does), ``oom`` (raise ``torch.OutOfMemoryError``),
    ``error`` (raise ``RuntimeError``), ``exit:CODE`` (write to stderr and exit without a result
    line), ``sleep:SECONDS`` (hang). SELECTOR: the model name as
    given, or ``batch=N`` / ``rank=N`` / ``layers=N`` (the requested values), or ``process=N``
    (only the process of that rank in a fit test on several processes, ``--gpus``).
    """
    spec = environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    for entry in spec.split(","):
        entry = entry.strip()
        fault, _, selector = entry.partition("@")
        kind, _, argument = fault.partition(":")
        if kind not in FAULT_KINDS or (kind in ("sleep", "exit")) != bool(argument):
            raise ValueError(
                f"{FAULT_ENV}={spec!r}: entry {entry!r} is not one of segfault, sigkill, oom, error, exit:CODE, "
                f"sleep:SECONDS (optionally @MODEL or @batch=N / @rank=N / @layers=N / @process=N)"
            )
        try:
            float(argument) if kind == "sleep" else int(argument) if kind == "exit" else None
        except ValueError:
            raise ValueError(f"{FAULT_ENV}={spec!r}: {kind} needs a number, got {argument!r}") from None
        if _selector_matches(selector, model, config, spec, environ):
            return fault
    return None


def _selector_matches(selector: str, model: str, config: FitConfig, spec: str, environ=os.environ) -> bool:
    if not selector:
        return True
    key, equals, value = selector.partition("=")
    if not equals:
        return selector == model
    fields = {"batch": config.batch_size, "rank": config.lora_rank, "layers": config.lora_layers,
              "process": int(environ.get("RANK") or 0)}
    if key not in fields or not value.isdigit():
        raise ValueError(f"{FAULT_ENV}={spec!r}: selector {selector!r} must be a model name or batch=N, rank=N, "
                         f"layers=N, process=N")
    return fields[key] == int(value)


def trigger_fault(fault: str) -> None:
    """Fail the way ``fault`` says (see ``injected_fault``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    kind, _, argument = fault.partition(":")
    if kind == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "oom":
        import torch

        raise torch.OutOfMemoryError(f"out of memory ({FAULT_ENV}={fault}, injected for testing)")
    elif kind == "error":
        raise RuntimeError(f"injected failure ({FAULT_ENV}={fault}, for testing)")
    elif kind == "exit":
        print(f"injected exit with code {argument} ({FAULT_ENV}, for testing)", file=sys.stderr, flush=True)
        os._exit(int(argument))
    elif kind == "sleep":
        time.sleep(float(argument))


# ---------------------------------------------------------------------------- the parent's lifeline

def watch_parent(environ=os.environ) -> None:
    """End this fit test when the benchmark that started it (pid in ``YOUR_AI_PROBE_PARENT``) is gone, however it
    ended, SIGKILL included: kill the fit test's process groups (this process's, and torchrun's above it).

    On Linux the benchmark's direct child also asks the kernel for SIGKILL when its parent dies
    (``PR_SET_PDEATHSIG``, then checks the parent is still the one expected, as it may have died before); a
    watchdog thread polling the parent every ``PARENT_POLL_S`` covers macOS and the processes under torchrun.
    Without the variable (a fit test run by hand) nothing is watched."""
    raw = environ.get(PARENT_ENV, "")
    if not raw.isdigit():
        return
    import psutil

    parent_pid = int(raw)
    if os.getppid() == parent_pid:
        _die_with_parent(parent_pid)
    try:
        parent = psutil.Process(parent_pid)
        chain = [psutil.Process(), *psutil.Process().parents()]
        top = next(process for process in chain if process.ppid() == parent_pid)  # this one, or torchrun
        groups = {os.getpgid(top.pid), os.getpgrp()} - {os.getpgid(parent_pid)}  # never the benchmark's own
    except (psutil.Error, StopIteration, OSError):  # the benchmark is gone already
        _end_fit_test(set())
    if _gone(parent):
        _end_fit_test(groups)
    direct = top.pid == os.getpid()
    threading.Thread(target=_watch, args=(parent, groups, direct), daemon=True, name="parent-watchdog").start()


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL from the kernel when the parent dies; if it died already, die now."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def _gone(process) -> bool:
    import psutil

    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _watch(parent, groups: set[int], direct: bool) -> None:
    """Poll until the parent is gone: for its direct child, until this process is reparented (a system call,
    nothing allocated while the probe measures its peak); under torchrun, by the parent's status."""
    while (os.getppid() == parent.pid) if direct else not _gone(parent):
        time.sleep(PARENT_POLL_S)
    _end_fit_test(groups)


def _end_fit_test(groups: set[int]) -> NoReturn:
    """Kill the fit test's process groups, this process last."""
    own = os.getpgrp()
    for group in sorted(groups, key=lambda g: g == own):
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------- the probe

def run_probe(
    model: str,
    max_memory_gb: float | None = None,
    device: str | None = None,
    config: FitConfig = FitConfig(),
    *,
    synthetic: bool = False,
    trust_remote_code: bool = False,
    strategy: str | None = None,
) -> dict:
    """Run one fit test of ``model`` (preset, hub id or directory) in this process; the result dict.

    Started by torchrun (``--gpus N``), every process runs it on its own GPU (or CPU) with the model
    replicated (``ddp``) or sharded (``fsdp``; ``strategy`` auto: ``fit_strategy``); the peaks become the
    largest of all processes, and ``processes``, ``rank`` and ``strategy`` say how it ran."""
    started = time.monotonic()
    preset = PRESETS.get(model)
    result = {**new_result(model, device, config, synthetic, max_memory_gb), "duration_s": None}
    peak = world = None
    try:
        import torch

        from your_ai.train import parallel as distributed
        from your_ai.hardware import pick_device
        from your_ai.model.errors import ModelNotAvailableError
        from your_ai.model.resolve import model_shape, resolve_model

        device = pick_device(device)
        result["device"] = device
        world, device = distributed.start(device)  # under torchrun: join the other processes, on this rank's GPU
        memory.use_expandable_segments(device)
        if world.distributed:
            result.update(processes=world.size, rank=world.rank)
        if max_memory_gb is None:
            max_memory_gb = memory.default_budget_gb(device)
            result["max_memory_gb"] = round(max_memory_gb, 3)
        peak = memory.PeakMemory(device)
        peak.reset()  # from the start: the peak includes the model's weights
        try:
            phase("resolving")
            if not synthetic:
                resolved = resolve_model(model)
                result["model_name"] = resolved.hub_id or str(resolved.path)
                if resolved.preset and not result["preset"]:  # a preset's hub id
                    result.update(preset=resolved.preset.name, params=resolved.preset.params)
            fault = injected_fault(model, config)
            if fault:
                trigger_fault(fault)
            if world.distributed:
                strategy = fit_strategy(strategy, model_shape(model, synthetic=synthetic).architecture, device,
                                        config, max_memory_gb, world.size)
                result["strategy"] = strategy
            _fit_test(model, device, config, max_memory_gb, synthetic, trust_remote_code, peak, result,
                      world=world, strategy=strategy)
        except ModelNotAvailableError as error:
            result.update(status="not_available", error=str(error), download_command=error.download_command)
            _estimate_from_preset(preset, device, config, max_memory_gb, result)
        except (torch.OutOfMemoryError, MemoryError) as error:
            result.update(status="oom", error=f"{type(error).__name__}: {_first_line(error)}")
        except RuntimeError as error:
            if _is_mps_out_of_memory(error):
                result.update(status="oom", error=f"{type(error).__name__}: {_first_line(error)}")
            else:
                raise
    except Exception as error:  # noqa: BLE001 -- any other failure is reported with its real message
        result.update(status="error", error=f"{type(error).__name__}: {error}")
    finally:
        if peak is not None:
            _record_peaks(peak, result)
        result["duration_s"] = round(time.monotonic() - started, 3)
    if world is not None and world.distributed:
        _across_processes(world, device, result)
    if result["status"] == "pass" and max_memory_gb is not None and result["peak_memory_gb"] > max_memory_gb:
        result.update(
            status="over_budget",
            error=f"peak {result['peak_memory_gb']:.2f} GB is over the {max_memory_gb:.2f} GB budget",
        )
    result["success"] = result["status"] == "pass"
    return result


def _fit_test(model, device, config, max_memory_gb, synthetic, trust_remote_code, peak, result,
              world=None, strategy: str | None = None) -> None:
    import torch

    from your_ai.train import parallel as distributed
    world = world or distributed.World()
    phase("loading")
    from your_ai.train.loss import StepLoss
    from your_ai.train.plan import Objective
    from your_ai.train.setup import apply_step_mode, build_optimizer, load_for_training

    loaded = time.monotonic()
    lora = LoraSettings(rank=config.lora_rank, layers=config.lora_layers)
    sharded = world.distributed and strategy == "fsdp"
    training = load_for_training(
        model, lora, device, grad_checkpoint=config.grad_checkpoint and config.step_mode == "plain",
        synthetic=synthetic, trust_remote_code=trust_remote_code, quantize=config.quantize,
        on_meta=sharded and not config.quantize,  # 4-bit weights are built whole, then sharded
    )
    net = training.model
    step_loss = StepLoss(net, None, False)  # the objective and the head are set below
    if sharded:
        if device.startswith("cuda"):  # building the skeleton passed each empty tensor through the GPU's cache
            torch.cuda.empty_cache()
            peak.reset()
        distributed.shard_and_load(step_loss, world, device, None if synthetic else training.resolved.path)
    peak.sample()
    result["load_time_s"] = round(time.monotonic() - loaded, 3)
    model_config = net.config.to_dict()
    architecture = architecture_from_config(model_config)
    seq_length = memory.fit_seq_length(config.seq_length, architecture)
    layers_used = min(config.lora_layers, architecture.num_hidden_layers)
    result["config"].update(seq_length=seq_length, lora_layers=layers_used, dtype=str(training.dtype).replace("torch.", ""))
    result["architecture"] = training.architecture_name
    result["notes"].extend(training.notes)
    result["parameter_count"] = architecture.parameter_count()
    if result["params"] is None:
        result["params"] = params_label(architecture.parameter_count())
    step_budget = max_memory_gb
    saved = memory.sharding_saves_gb(architecture, device, world.size, config.quantize) if sharded else 0.0
    if max_memory_gb is not None:  # the step mode's estimate holds the whole model: add what sharding saves
        step_budget += saved
    prepared = apply_step_mode(net, config.step_mode, lora, config.batch_size, seq_length, device, step_budget,
                               grad_checkpoint=config.grad_checkpoint, quantize=config.quantize)
    result["config"]["step_mode"] = prepared.mode.name
    result["estimate_gb"] = prepared.mode.estimate_gb
    if sharded:  # per process
        result["estimate_gb"] = round(prepared.mode.estimate_gb - saved, 3)
    result["notes"].append(f"step mode {prepared.mode.reason}")
    result["notes"].extend(prepared.notes)

    generator = torch.Generator().manual_seed(0)
    shape = (config.batch_size, seq_length)
    input_ids = torch.randint(0, architecture.vocab_size, shape, generator=generator)
    auth_weight = torch.rand(config.batch_size, generator=generator) * 0.99
    prov_entropy = torch.rand(config.batch_size, generator=generator) * 8.0
    batch = {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones(shape, dtype=torch.long, device=device),
        "labels": input_ids.to(device),
        "auth_weight": auth_weight.to(device),
        "prov_entropy": prov_entropy.to(device),
    }
    objective = Objective.from_dataset("weighted", 2.7, 1.0, auth_weight.tolist(), prov_entropy.tolist())
    step_loss.objective, step_loss.fast_head, step_loss.chunk_tokens = objective, prepared.fast_head, \
        prepared.chunk_tokens
    if not sharded:
        step_loss = distributed.wrap(step_loss, world, device)  # several processes: DDP; one: as it is
    optimizer = build_optimizer(net, LEARNING_RATE)
    net.train()
    times = []
    for step in range(1, config.steps + 1):
        phase(f"step {step}/{config.steps}")
        began = time.perf_counter()
        loss = step_loss(batch)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronize(device)
        times.append(time.perf_counter() - began)
        peak.sample()
        if not torch.isfinite(loss.detach()).item():
            result["notes"].append(f"loss was not finite at step {step}")
    step_time, spread = step_time_summary(timed_steps(times))
    result.update(
        status="pass",
        step_time_s=round(step_time, 4),
        step_time_iqr_s=spread and [round(bound, 4) for bound in spread],
        tokens_per_s=round(config.batch_size * world.size * seq_length / step_time, 1),  # all processes
        step_times_s=[round(t, 4) for t in times],
    )
    phase("done")


MIN_STEPS_FOR_SPREAD = 3


def timed_steps(times: list[float]) -> list[float]:
    """The steps that count for speed: all but the first, which includes one-off warm-up (unless it is alone)."""
    return times[1:] if len(times) > 1 else times


def step_time_summary(times: list[float]) -> tuple[float, tuple[float, float] | None]:
    """The median of timed steps' seconds and their interquartile range (first, third quartile); the range
    is None with fewer than ``MIN_STEPS_FOR_SPREAD`` steps, too few to say how much they vary."""
    if len(times) < MIN_STEPS_FOR_SPREAD:
        return statistics.median(times), None
    first, _, third = statistics.quantiles(times, n=4, method="inclusive")
    return statistics.median(times), (first, third)


def _across_processes(world, device: str, result: dict) -> None:
    """A fit test on several processes: a process that failed says which it is (it reports for itself; the
    others may be waiting for it in a collective). When this one passed, each peak becomes the largest of
    all processes (the per-GPU peak), which rank 0 reports; ``run_single`` then leaves the process group."""
    from your_ai.train import parallel as distributed
    where = f"process {world.rank} of {world.size}"
    if result["status"] != "pass":
        result["error"] = f"{result['error']} ({where})"
        return
    try:
        for key in ("peak_memory_gb", "peak_device_gb", "peak_host_gb"):
            if result[key] is not None:
                result[key] = round(distributed.all_max(result[key], world, device), 3)
    except Exception as error:  # noqa: BLE001 -- another process failed; its own result tells why
        result.update(status="error", error=f"lost the other processes while gathering the peaks: "
                                            f"{type(error).__name__}: {_first_line(error)} ({where})")


def fit_strategy(strategy: str | None, architecture: Architecture, device: str, config: FitConfig,
                 budget_gb: float | None, processes: int) -> str | None:
    """How a fit test on ``processes`` processes holds the model (None for one process): ``--strategy``
    ``ddp`` or ``fsdp`` as given; ``auto``: ``ddp`` when the one-device estimate fits ``budget_gb``, else
    ``fsdp`` (``distributed.pick_strategy``)."""
    if processes <= 1:
        return None
    from your_ai.train import parallel as distributed
    if strategy in ("ddp", "fsdp"):
        return strategy
    fits = budget_gb is None or estimate_for(architecture, device, config, budget_gb).total_gb <= budget_gb
    return distributed.pick_strategy(strategy, fits)


def per_process_estimate_gb(architecture: Architecture, device: str, config: FitConfig, budget_gb: float | None,
                            processes: int = 1, strategy: str | None = None) -> float:
    """The analytic estimate for one process of a fit test (``estimate_for``): under ``fsdp`` its share of the
    weights, the rest whole, in the step mode the probe picks for that share."""
    if strategy != "fsdp" or processes <= 1:
        return estimate_for(architecture, device, config, budget_gb).total_gb
    saved = memory.sharding_saves_gb(architecture, device, processes, config.quantize)
    return estimate_for(architecture, device, config, None if budget_gb is None else budget_gb + saved).total_gb - saved


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device == "mps":
        torch.mps.synchronize()


def _record_peaks(peak: memory.PeakMemory, result: dict) -> None:
    try:
        device_peak = peak.device_peak_gb()
    except Exception as error:  # noqa: BLE001 -- a broken device after a failure must not hide the result
        device_peak = None
        result["notes"].append(f"device peak unavailable: {error}")
    host_peak = memory.process_peak_rss_gb()
    result["peak_device_gb"] = None if device_peak is None else round(device_peak, 3)
    result["peak_host_gb"] = round(host_peak, 3)
    result["peak_memory_gb"] = round(device_peak if device_peak is not None else host_peak, 3)


def _estimate_from_preset(preset, device: str, config: FitConfig, max_memory_gb: float | None, result: dict) -> None:
    if preset is None:
        return
    mode = step_mode_for(preset.architecture, device, config, max_memory_gb)
    result["config"]["step_mode"] = mode.name
    result["estimate_gb"] = mode.estimate_gb


def step_mode_for(architecture: Architecture, device: str, config: FitConfig,
                  budget_gb: float | None = None) -> StepMode:
    """The step mode a fit test of ``config`` runs on ``device`` within ``budget_gb`` (None: no budget),
    as the probe chooses it (``step_modes.select_step_mode``), from the architecture alone."""
    return select_step_mode(
        config.step_mode, _step_shape(architecture, device, config), budget_gb,
        grad_checkpoint=config.grad_checkpoint, full_logits=architecture.model_type not in PLAIN_HEAD_MODEL_TYPES,
    )


def estimate_for(architecture: Architecture, device: str, config: FitConfig,
                 budget_gb: float | None = None) -> memory.MemoryEstimate:
    """The analytic estimate for a fit test of ``config`` on ``device`` (training dtype assumed), in the
    step mode it runs within ``budget_gb`` (``step_mode_for``)."""
    return mode_estimate(_step_shape(architecture, device, config), step_mode_for(architecture, device, config, budget_gb))


def _step_shape(architecture: Architecture, device: str, config: FitConfig) -> memory.StepShape:
    return memory.StepShape(architecture, config.batch_size, memory.fit_seq_length(config.seq_length, architecture),
                            config.lora_rank, config.lora_layers, device, config.quantize)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _is_mps_out_of_memory(error: RuntimeError) -> bool:
    """Apple's MPS backend reports exhaustion as a RuntimeError with this message."""
    return str(error).startswith("MPS backend out of memory")


def run_single(model: str, max_memory_gb: float | None, device: str | None, config: FitConfig,
               *, synthetic: bool = False, trust_remote_code: bool = False, strategy: str | None = None) -> int:
    """``benchmark --single-model``: run the probe, print its one result line; exit code 0 on a pass.

    Under torchrun rank 0 prints the result of all processes; another process prints only its own failure."""
    watch_parent()
    result = run_probe(model, max_memory_gb, device, config, synthetic=synthetic, trust_remote_code=trust_remote_code,
                       strategy=strategy)
    if result.get("rank", 0) == 0 or result["status"] not in ("pass", "over_budget"):  # rank 0, or its own failure
        emit_result(result)
    code = 0 if result["success"] else 1
    if result["processes"] > 1:
        _leave(code, together=result["status"] in ("pass", "over_budget"))
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

"""The benchmark: which models fit this machine, measured one fit test per subprocess.

The models are the five benchmark presets, the ones named (presets, hub ids, directories), or every causal
LM in the local Hugging Face cache; their shapes are read from their configs without loading weights
(``model.resolve.model_shape``). For each, smallest first, the benchmark runs a fit test in a subprocess
(``your_ai.fit.runner``), which classifies how it ended.

An out-of-memory result or a peak over the budget stops the run (larger models will not fit either); a
missing model, an unreadable config, an error, a timeout or a crash does not. SIGINT or SIGTERM kills the
running fit test, logs ``benchmark_interrupted`` and raises ``Stopped``. Every event is appended, flushed, to
a JSONL log.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TextIO

from your_ai.environment import env_number
from your_ai.files import write_json_atomic
from your_ai.fit.plan import (
    DEFAULT_LOG,
    DEFAULT_TIMEOUT_S,
    SWEEP_STEPS,
    FitConfig,
    FitTest,
    check_processes,
    fit_strategy,
    per_process_estimate_gb,
    resolve_device,
)
from your_ai.fit.progress import EventLog, ProgressLine, new_run_id, now_iso, printer
from your_ai.fit.result import (
    STOPPING_STATUSES,
    FitResult,
    processes_word,
    result_text,
    train_flags,
)
from your_ai.fit.runner import FitTestRun, Stopped, run_in_subprocess, stop_on_signals
from your_ai.fit.sweep import run_optimize
from your_ai.model.architecture import Architecture
from your_ai.model.errors import (
    InvalidModelNameError,
    ModelNotAvailableError,
    ModelResolutionError,
)
from your_ai.model.presets import BENCHMARK_PRESETS, PRESETS, Preset
from your_ai.model.resolve import cached_causal_lms, model_shape, short_label
from your_ai.step import memory

SAFETY_ENV = "YOUR_AI_SAFETY_MIN_AVAILABLE_GB"
SAFETY_MIN_AVAILABLE_GB = 2.0


def safety_min_available_gb() -> float:
    """The available-memory floor below which the benchmark stops (``YOUR_AI_SAFETY_MIN_AVAILABLE_GB``)."""
    return env_number(SAFETY_ENV, SAFETY_MIN_AVAILABLE_GB, unit=" of GB")


# ---------------------------------------------------------------------------- the models to test

@dataclass(frozen=True)
class Candidate:
    """A model the benchmark tests: the name given, how its line shows it, and its shape when known."""
    name: str  # preset name, hub id or directory, as given (what `train --model` takes)
    label: str  # the preset's name, a hub id's name part or a directory's name
    params: str  # 7B, 135M; "?" when the shape is unknown
    preset: Preset | None
    model_name: str  # the hub id, else the directory
    architecture: Architecture | None  # what the estimate uses; None: unknown (``problem`` says why)
    located: bool  # on this machine (or synthetic)
    problem: Exception | None = None  # why it cannot be tested: not available, a broken config

    @property
    def size(self) -> float:
        """The order of the run: parameters to 0.1B (a preset's own shape), unknown sizes last."""
        architecture = self.preset.architecture if self.preset else self.architecture
        return round(architecture.parameter_count() / 1e8) if architecture else float("inf")

    def ids(self) -> dict:
        """The fields naming this model in the log and in the skipped list."""
        return {"model": self.name, "preset": self.preset.name if self.preset else None, "model_name": self.model_name}

    def named(self, result: FitResult) -> FitResult:
        """``result`` with this model's names and size label (which a result the parent makes lacks for a
        model that is not a preset)."""
        result.model, result.preset, result.model_name = self.ids().values()
        if self.params != "?":
            result.params = self.params
        return result

    def line_prefix(self, index: int, total: int) -> str:
        return f"[{index}/{total}] {self.label:20} ({self.params:4}) ... "


def candidate(name: str, synthetic: bool = False) -> Candidate:
    """``name`` (preset, hub id or directory) as the benchmark tests it, its shape read without loading
    weights (``model.resolve.model_shape``; a preset that is not on this machine: the preset's shape). A model
    that is not available or whose config has no usable shape becomes a candidate with its ``problem``;
    a name that is none of the three raises ``ValueError``."""
    try:
        shape = model_shape(name, synthetic=synthetic, preset_when_missing=True)
    except InvalidModelNameError as error:
        raise ValueError(f"--models {name}: {error}") from None
    except (ModelResolutionError, ValueError) as error:
        preset = PRESETS.get(name)
        return Candidate(name, short_label(name), preset.params if preset else "?", preset,
                         preset.hub_id if preset else name, None, False, error)
    return Candidate(name, shape.label, shape.params, shape.preset, shape.model_name, shape.architecture,
                     synthetic or shape.resolved is not None)


def benchmark_candidates(names: Sequence[str] | None, synthetic: bool = False) -> list[Candidate]:
    """The models to test, smallest first (to 0.1B; equal sizes keep their order; unknown sizes last): the
    five benchmark presets, or the named ones (presets, hub ids, directories)."""
    names = names or [preset.name for preset in BENCHMARK_PRESETS]
    return sorted((candidate(name, synthetic) for name in dict.fromkeys(names)), key=lambda c: c.size)


# ---------------------------------------------------------------------------- the run

@dataclass
class _Run:
    """A benchmark under way: how each model is tested, and what was found so far."""
    device: str
    max_memory_gb: float
    config: FitConfig
    timeout_s: float
    synthetic: bool
    force: bool
    gpus: int
    strategy: str | None
    log: EventLog
    stream: TextIO
    results: list[FitResult] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    stop_reason: str | None = None
    safety_stopped: bool = False
    current: Candidate | None = None
    progress: ProgressLine | None = None
    available_gb: float = 0.0  # system memory available before the current model

    def say(self, text: str = "") -> None:
        printer(self.stream)(text)

    def test_all(self, candidates: list[Candidate]) -> None:
        for index, model in enumerate(candidates, start=1):
            self.current = model
            prefix = model.line_prefix(index, len(candidates))
            if self.stop_reason or self._safety_stop(model):
                self._skip(prefix, model, self.stop_reason)
                continue
            result = self._test(model, prefix, index, len(candidates))
            self.results.append(result)
            if result.status in STOPPING_STATUSES:
                self.stop_reason = (
                    f"{model.label} {'ran out of memory' if result.status == 'oom' else 'went over the budget'}; "
                    "larger models will not fit")

    def _skip(self, prefix: str, model: Candidate, reason: str) -> None:
        self.say(f"{prefix}- Skipped ({reason})")
        self.skipped.append({**model.ids(), "params": model.params, "reason": reason})

    def _safety_stop(self, model: Candidate) -> bool:
        """Too little system memory is available to go on (unless ``force``): say so, stop the run."""
        available, floor = memory.system_memory_gb()[1], safety_min_available_gb()
        self.available_gb = available
        if self.force or available >= floor:
            return False
        self.safety_stopped, self.stop_reason = True, "safety stop"
        self.say(f"SAFETY STOP: only {available:.1f} GB of system memory is available (under {floor:g} GB); "
                 f"stopping before {model.label}. Close other programs, or pass --force to go on anyway.")
        self.log.log("safety_stop", **model.ids(), available_gb=round(available, 3), min_available_gb=floor)
        return True

    def _test(self, model: Candidate, prefix: str, index: int, total: int) -> FitResult:
        if model.problem:
            result = _problem_result(model, self._fit_test(model))
            self.say(f"{prefix}{result_text(result)}")
            self.log.log("model_unusable", **model.ids(), index=index, total=total, status=result.status,
                         error=result.error)
            return result
        test = self._fit_test(model)
        self.log.log("model_start", **model.ids(), index=index, total=total, estimate_gb=test.estimate_gb,
                     available_gb=round(self.available_gb, 3))
        self.progress = ProgressLine(self.stream, prefix)
        self.progress.start()
        too_large = self._weights_over_budget(model, test)
        if too_large:
            return too_large
        run = run_in_subprocess(test, timeout_s=self.timeout_s, on_tick=self.progress.update, on_start=lambda r: (
            self.log.log("subprocess_start", **model.ids(), pid=r.pid, command=r.command)))
        return self._finished(model, run)

    def _fit_test(self, model: Candidate) -> FitTest:
        """The fit test of ``model``, with its strategy and per-process estimate (when its shape is known)."""
        test = FitTest(model.name, self.device, self.config, self.max_memory_gb, self.synthetic, model.preset,
                       processes=self.gpus)
        if model.architecture is None:
            return test
        strategy = fit_strategy(self.strategy, model.architecture, self.device, self.config, self.max_memory_gb,
                                self.gpus)
        estimate = per_process_estimate_gb(model.architecture, self.device, self.config, self.max_memory_gb,
                                           self.gpus, strategy)
        return replace(test, strategy=strategy, estimate_gb=round(estimate, 3))

    def _weights_over_budget(self, model: Candidate, test: FitTest) -> FitResult | None:
        """A model on this machine whose weights alone exceed the budget is not loaded (unless ``force``)."""
        architecture, sharded = model.architecture, test.strategy == "fsdp"
        weights = memory.weights_gb(architecture, self.device, self.config.quantize)
        if sharded:  # each process holds its share
            weights -= memory.sharding_saves_gb(architecture, self.device, self.gpus, self.config.quantize)
        if not model.located or self.force or weights <= self.max_memory_gb:
            return None
        share = (f" per {processes_word(self.device)} (sharded over {self.gpus}, with the layers FSDP gathers "
                 f"whole)") if sharded else ""
        result = model.named(test.result("over_budget", (
            f"the weights alone need {weights:.2f} GB{share} > {self.max_memory_gb:.2f} GB budget; not loaded, "
            f"--force tries anyway")))
        result.processes, result.strategy = self.gpus, test.strategy
        self.progress.finish(result_text(result))
        self.log.log("over_budget_precheck", **model.ids(), weights_gb=round(weights, 3),
                     max_memory_gb=self.max_memory_gb)
        return result

    def _finished(self, model: Candidate, run: FitTestRun) -> FitResult:
        result = model.named(run.result)
        result.duration_s = round(run.duration_s, 3)
        self.progress.finish(result_text(result))
        if run.spawn_error:
            self.log.log("subprocess_spawn_error", **model.ids(), error=run.spawn_error, command=run.command)
            return result
        self.say(f"      [Memory released - subprocess {'killed' if run.timed_out else 'exited'}]")
        event = "subprocess_success" if result.success else "subprocess_failed"
        self.log.log(event, **model.ids(), status=result.status, error=result.error,
                     peak_memory_gb=result.peak_memory_gb, result=result.to_dict(), **run.facts())
        return result

    def optimize_passed(self, quick: bool) -> None:
        """Run the optimize sweep for each model that passed and record its best config."""
        for result in (r for r in self.results if r.success):
            self.say()
            self.say(f"Optimizing {result.model} ({'quick' if quick else 'full'} grid)")
            self.log.log("optimize_start", model=result.model, preset=result.preset)
            outcome = run_optimize(
                result.model, max_memory_gb=self.max_memory_gb, device=self.device, quick=quick, steps=SWEEP_STEPS,
                timeout_s=self.timeout_s, synthetic=self.synthetic, seq_length=self.config.seq_length,
                grad_checkpoint=self.config.grad_checkpoint, step_mode=self.config.step_mode, stream=self.stream,
                say=self.say, gpus=self.gpus, strategy=self.strategy, quantize=self.config.quantize,
                dora=self.config.dora,
            )
            result.optimal_config = outcome["best"] and {**outcome["best"], "profile": outcome["path"]}
            self.log.log("optimize_complete", model=result.model, preset=result.preset,
                         optimal_config=result.optimal_config, results=outcome["results"])

    def interrupted(self, stop: KeyboardInterrupt) -> None:
        """Ctrl-C or SIGTERM (``Stopped``): close the open line and log what was done."""
        name = stop.signal_name if isinstance(stop, Stopped) else "SIGINT"
        if isinstance(stop, Stopped) and stop.model is None and self.current is not None:
            stop.model = self.current.label
        if self.progress is not None and self.progress.open:
            self.progress.finish(f"✗ Stopped by {name}")
        self.log.log("benchmark_interrupted", signal=name, preset=getattr(stop, "model", None),
                     pid=getattr(stop, "child_pid", None), tested=len(self.results),
                     passed=sum(r.success for r in self.results))


def _problem_result(found: Candidate, test: FitTest) -> FitResult:
    """The result of a model that cannot be tested: not available (with the download command), or an error."""
    missing = isinstance(found.problem, ModelNotAvailableError)
    result = test.result("not_available" if missing else "error", str(found.problem))
    result.download_command = found.problem.download_command if missing else None
    return found.named(result)


@stop_on_signals()
def run_benchmark(
    models: Sequence[str] | None = None,
    *,
    max_memory_gb: float | None = None,
    device: str | None = None,
    config: FitConfig = FitConfig(),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    log_path: str | os.PathLike | None = DEFAULT_LOG,
    output: str | os.PathLike | None = None,
    synthetic: bool = False,
    force: bool = False,
    optimize: bool = False,
    quick: bool = False,
    stream: TextIO | None = None,
    gpus: int = 1,
    strategy: str | None = None,
    cached: bool = False,
) -> dict:
    """Test each model in a subprocess, print one line per model, log every event; the report dict.

    ``models``: presets, hub ids and directories (default: the five benchmark presets); ``cached``: every
    causal LM in the local Hugging Face cache (``model.resolve.cached_causal_lms``) instead.
    ``gpus`` > 1: each fit test runs under torchrun on that many GPUs (CPU processes with ``device``
    "cpu"), the model replicated or sharded by ``strategy`` (``plan.fit_strategy``); the budget and the
    peaks are per GPU."""
    found = None
    if cached:
        found = cached_causal_lms()
        models = found.hub_ids
    candidates = benchmark_candidates(models, synthetic) if models or not cached else []
    check_processes(gpus, device)
    device = resolve_device(device)
    budget_source = "--max-memory"
    if max_memory_gb is None:
        max_memory_gb, budget_source = memory.default_budget(device)
    run = _Run(device, max_memory_gb, config, timeout_s, synthetic, force, gpus, strategy,
               EventLog(log_path, new_run_id()), stream or sys.stdout)
    started = time.monotonic()
    run.log.log("benchmark_start", models=[c.name for c in candidates], max_memory_gb=round(max_memory_gb, 3),
                device=device, synthetic=synthetic, force=force, timeout_s=timeout_s, config=asdict(config),
                optimize=optimize, gpus=gpus, strategy=strategy or "auto")
    _print_header(run, candidates, found, budget_source)
    try:
        run.test_all(candidates)
        if optimize:
            run.optimize_passed(quick)
    except KeyboardInterrupt as stop:  # Stopped: SIGINT or SIGTERM; the running fit test was killed
        run.interrupted(stop)
        raise
    report = _report(run, found)
    _print_summary(report, run.say)
    passed = sum(r["success"] for r in report["models"])
    run.log.log("benchmark_complete", tested=len(run.results), passed=passed, failed=len(run.results) - passed,
                skipped=len(run.skipped), recommended=report["recommended"],
                duration_s=round(time.monotonic() - started, 3))
    if output:
        run.say(f"Results saved to {write_json_atomic(output, report)}")
    return report


def _print_header(run: _Run, candidates: list[Candidate], found, budget_source: str) -> None:
    config, say, device, gpus = run.config, run.say, run.device, run.gpus
    per = f" per {processes_word(device)}" if gpus > 1 else ""
    on = (f"{device}, {gpus} {processes_word(device, gpus)} per model (strategy {run.strategy or 'auto'})"
          if gpus > 1 else device)
    if found is not None:
        others = f"; {len(found.skipped)} other repo(s) skipped (not causal LMs)" if found.skipped else ""
        say(f"Hugging Face cache {found.cache}: {len(found.hub_ids)} causal LM(s){others}")
        if not found.hub_ids:
            say("Nothing to test: download a model with `hf download ORG/NAME`, or name models with --models")
    say(f"Benchmark: {len(candidates)} model(s), smallest first, on {on}; budget {run.max_memory_gb:.2f} GB{per} "
        f"({budget_source})" + ("; synthetic random-weight models" if run.synthetic else ""))
    say(f"Fit test: batch {config.batch_size}, LoRA rank {config.lora_rank} on the last {config.lora_layers} layers, "
        f"sequence {config.seq_length or 1024}, {config.steps} steps; timeout {run.timeout_s:g} s per model")
    if run.log.path:
        say(f"Log: {run.log.path} (run {run.log.run_id})")
    say()


def _report(run: _Run, found) -> dict:
    passed = [r for r in run.results if r.success]
    report = {
        "run_id": run.log.run_id,
        "created_at": now_iso(),
        "max_memory_gb": round(run.max_memory_gb, 3),
        "device": run.device,
        "device_memory_gb": round(memory.device_memory_gb(run.device), 3),
        "synthetic": run.synthetic,
        "gpus": run.gpus,
        "strategy": run.strategy or "auto",
        "config": asdict(run.config),
        "recommended": passed[-1].model if passed else None,
        "alternatives": [r.model for r in reversed(passed[:-1])],
        "models": [r.to_dict() for r in run.results],
        "skipped": run.skipped,
        "safety_stop": run.safety_stopped,
        "log": str(run.log.path) if run.log.path else None,
    }
    if found is not None:
        report["cache"] = {"path": str(found.cache), "models": found.hub_ids, "skipped": found.skipped}
    elif not passed:
        report["untested_cached"] = _untested_cached(run.results)
    return report


def _untested_cached(results: list[FitResult]) -> list[str]:
    """The causal LMs in the local cache that were not among ``results`` (what ``--cached`` would test)."""
    tested = {r.model_name for r in results}
    return [hub_id for hub_id in cached_causal_lms().hub_ids if hub_id not in tested]


def _print_summary(report: dict, say) -> None:
    results, skipped = report["models"], report["skipped"]
    passed = [r for r in results if r["success"]]
    say()
    say(f"Tested {len(results)}, passed {len(passed)}, failed {len(results) - len(passed)}, skipped {len(skipped)}.")
    if passed:
        say(f"Recommended: {report['recommended']} (largest model that fits)")
        if report["alternatives"]:
            say(f"Alternatives: {', '.join(report['alternatives'])}")
        best = passed[-1]
        flags = train_flags(processes=best["processes"], device=best["device"], strategy=best["strategy"],
                            quantize=best["config"].get("quantize"), dora=bool(best["config"].get("dora")))
        say(f"Train it with: your-ai train {flags}--model {report['recommended']}")
        return
    say("No models passed benchmark.")
    _print_missing([r for r in results if r["status"] == "not_available"], say)
    untested = report.get("untested_cached") or []
    if untested:
        say()
        say(f"In your Hugging Face cache, not tested: {', '.join(untested)}; "
            "test them with: your-ai benchmark --cached")
    if report.get("log"):
        say(f"Details of every attempt: {report['log']}")


def _print_missing(missing: list[dict], say) -> None:
    if not missing:
        return
    say()
    say(f"⚠️  {len(missing)} model(s) not found locally")
    say()
    say("The benchmark needs the models on this machine. Options:")
    say("  1. Download into the Hugging Face cache ($HF_HUB_CACHE, default ~/.cache/huggingface/hub):")
    for result in missing:
        say(f"       {result.get('download_command') or 'hf download ' + result['model_name']}")
    say("  2. Test a model you already have: your-ai benchmark --models /path/to/model,ORG/NAME (or --cached)")
    say("  3. Test the fit without downloading anything: your-ai benchmark --synthetic")

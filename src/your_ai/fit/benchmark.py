"""The benchmark: which models fit this machine, measured one model per subprocess.

The models are the five benchmark presets, the ones named (presets, hub ids, directories), or
every causal LM in the local Hugging Face cache; their shapes are read from their configs without
loading weights (``models.model_shape``). For each, smallest first, the benchmark starts
``your-ai benchmark --single-model MODEL`` in its own process group, reads its one ``BENCHMARK_RESULT:`` line
(``your_ai.fit.child``), reaps it with ``os.wait4`` (so even a killed child has a measured peak
RSS) and classifies what the child could not report itself from facts: killed by SIGKILL
(most likely the operating system's out-of-memory killer) -> ``oom``; killed by another
signal -> ``crashed``; no result line -> ``error`` with the child's last stderr lines; no
result within ``--timeout`` -> the whole process group is killed -> ``timeout``.

No child outlives the run: SIGINT or SIGTERM to the benchmark (``stop_on_signals``) kills the
running child's process group, logs ``benchmark_interrupted`` and raises ``Stopped``; when the
benchmark itself is killed (SIGKILL), the child notices its parent is gone and kills its own
group (``probe.watch_parent``).

An out-of-memory result or a peak over the budget stops the run (larger models will not
fit either); a missing model, an unreadable config, an error, a timeout or a crash does not. Every event is
appended, flushed, to a JSONL log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from your_ai.step import memory
from your_ai.files import write_json_atomic, writing
from your_ai.model.architecture import Architecture
from your_ai.model.presets import BENCHMARK_PRESETS, PRESETS, Preset
from your_ai.fit.child import (
    PARENT_ENV,
    PHASE_PREFIX,
    FitConfig,
    fit_strategy,
    new_result,
    parse_result_line,
    per_process_estimate_gb,
)

DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_LOG = "benchmark_log.jsonl"
SAFETY_ENV = "YOUR_AI_SAFETY_MIN_AVAILABLE_GB"
SAFETY_MIN_AVAILABLE_GB = 2.0
STOPPING_STATUSES = ("oom", "over_budget")
POLL_S = 0.1
TAIL_LINES = 20
TORCHRUN_GRACE_S = 45.0


# ---------------------------------------------------------------------------- small pieces

def safety_min_available_gb() -> float:
    """The available-memory floor below which the benchmark stops (``YOUR_AI_SAFETY_MIN_AVAILABLE_GB``)."""
    raw = os.environ.get(SAFETY_ENV)
    if raw is None or not raw.strip():
        return SAFETY_MIN_AVAILABLE_GB
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{SAFETY_ENV}={raw!r} is not a number of GB") from None
    if value < 0:
        raise ValueError(f"{SAFETY_ENV}={raw!r} must be >= 0")
    return value


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class EventLog:
    """Append-only JSONL event log: one flushed line per event, with a timestamp and the run id."""

    def __init__(self, path: str | os.PathLike | None, run_id: str):
        self.path = Path(path) if path else None
        self.run_id = run_id
        if self.path:
            with writing(self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, event: str, **fields) -> None:
        if not self.path:
            return
        record = {"timestamp": round(time.time(), 3), "time": now_iso(), "run_id": self.run_id, "event": event, **fields}
        with writing(self.path), open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def new_run_id() -> str:
    return f"{datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


class ProgressLine:
    """``[1/5] name (7B  ) ... <result>`` with, on a terminal, a live phase and elapsed time until the result."""

    def __init__(self, stream: TextIO, prefix: str):
        self.stream = stream
        self.prefix = prefix
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self._last = 0.0
        self.open = False  # started, not finished

    def start(self) -> None:
        self.open = True
        self.stream.write(self.prefix)
        self.stream.flush()

    def update(self, phase: str, elapsed: float) -> None:
        if not self.live or time.monotonic() - self._last < 0.5:
            return
        self._last = time.monotonic()
        self.stream.write(f"\r{self.prefix}{phase} ({elapsed:.0f}s)\x1b[K")
        self.stream.flush()

    def finish(self, text: str) -> None:
        self.open = False
        self.stream.write((f"\r{self.prefix}{text}\x1b[K\n") if self.live else f"{text}\n")
        self.stream.flush()


# ---------------------------------------------------------------------------- stopping by a signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stopping = threading.Event()  # set while stop_on_signals' handlers are installed


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a benchmark or optimize run; the fit test it was running (``child_pid``,
    of ``model``) was killed with its process group. The command exits with ``exit_code`` (128 + signal)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.child_pid: int | None = None
        self.model: str | None = None  # the model of the fit test running when the signal came
        self.detail: str | None = None  # its config, when that tells it apart (optimize)

    @property
    def signal_name(self) -> str:
        return _signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        """The one line that says what was stopped."""
        if self.child_pid is None:
            return f"Stopped by {self.signal_name}: no fit test was running."
        detail = f" ({self.detail})" if self.detail else ""
        return (f"Stopped by {self.signal_name}: the fit test of {self.model}{detail} was killed "
                f"(process group {self.child_pid}).")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside: SIGINT and SIGTERM raise ``Stopped`` in the main thread, so the running fit test's
    process group is killed on the way out (``run_probe_subprocess``). After the first signal both are
    ignored until the block is left, so a second Ctrl-C cannot cut the cleanup short. A signal the
    process ignored from the start (``nohup``) stays ignored; nested blocks install nothing."""
    if _stopping.is_set() or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

    def stop(signum, _frame):
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        raise Stopped(signum)

    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, stop)
    _stopping.set()
    try:
        yield
    finally:
        _stopping.clear()
        for number, handler in previous.items():
            signal.signal(number, handler)


# ---------------------------------------------------------------------------- one probe subprocess

@dataclass
class ProbeRun:
    """One child, as the parent saw it: its classified result and the facts behind it."""

    result: dict
    command: list[str]
    pid: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    timed_out: bool = False
    host_peak_gb: float | None = None
    duration_s: float = 0.0
    last_phase: str | None = None
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    spawn_error: str | None = None
    processes: int = 1  # > 1: the fit test ran under torchrun on that many processes
    strategy: str | None = None

    def facts(self) -> dict:
        return {
            "pid": self.pid, "exit_code": self.exit_code, "signal": self.signal, "timed_out": self.timed_out,
            "host_peak_gb": self.host_peak_gb, "duration_s": round(self.duration_s, 3), "last_phase": self.last_phase,
            "stderr_head": self.stderr_lines[:TAIL_LINES], "stderr_tail": self.stderr_lines[-TAIL_LINES:],
            "stdout_head": self.stdout_lines[:TAIL_LINES],
        }


def probe_command(model: str, max_memory_gb: float, device: str, config: FitConfig, *, synthetic: bool,
                  processes: int = 1, strategy: str | None = None) -> list[str]:
    """``your-ai benchmark --single-model MODEL ...``; on several processes the same under torchrun
    (``distributed.launch_command``) with ``--strategy``."""
    arguments = [
        "--single-model", model, "--max-memory", repr(float(max_memory_gb)), "--device", device, *config.cli_args(),
    ]
    if synthetic:
        arguments.append("--synthetic")
    if processes > 1:
        from your_ai.train.launch import launch_command

        return launch_command(processes, [*arguments, "--strategy", strategy or "auto"], "benchmark")
    return [sys.executable, "-m", "your_ai", "benchmark", *arguments]


def run_probe_subprocess(
    model: str,
    max_memory_gb: float,
    device: str,
    config: FitConfig = FitConfig(),
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    synthetic: bool = False,
    preset: Preset | None = None,
    estimate_gb: float | None = None,
    on_start: Callable[[ProbeRun], None] | None = None,
    on_tick: Callable[[str, float], None] | None = None,
    processes: int = 1,
    strategy: str | None = None,
) -> ProbeRun:
    """Run one fit probe in its own process group and classify how it ended. ``processes`` > 1: the probe
    runs under torchrun on that many processes with ``strategy`` (ddp or fsdp)."""
    command = probe_command(model, max_memory_gb, device, config, synthetic=synthetic, processes=processes,
                            strategy=strategy)
    run = ProbeRun(result={}, command=command, processes=processes, strategy=strategy)
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, text=True, errors="replace", bufsize=1,
            env={**os.environ, PARENT_ENV: str(os.getpid())},  # the child ends when this process is gone
        )
    except OSError as error:
        run.spawn_error = f"{type(error).__name__}: {error}"
        run.result = _parent_result(model, preset, device, config, synthetic, estimate_gb, max_memory_gb,
                                    "error", f"could not start the fit probe: {run.spawn_error}")
        return run
    run.pid = process.pid
    readers = []
    reaped = False
    try:
        if on_start:
            on_start(run)

        def read(pipe, lines: list[str], phases: bool) -> None:
            for line in pipe:
                line = line.rstrip("\n")
                if phases and line.startswith(PHASE_PREFIX):
                    run.last_phase = line[len(PHASE_PREFIX):]
                else:
                    lines.append(line)

        readers = [
            threading.Thread(target=read, args=(process.stdout, run.stdout_lines, False), daemon=True),
            threading.Thread(target=read, args=(process.stderr, run.stderr_lines, True), daemon=True),
        ]
        for reader in readers:
            reader.start()
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                reaped = True
                break
            elapsed = time.monotonic() - started
            if elapsed >= timeout_s:
                run.timed_out = True
                status, usage = _end(process.pid, processes)
                reaped = True
                break
            if on_tick:
                on_tick(run.last_phase or "starting", elapsed)
            time.sleep(POLL_S)
    except Stopped as stop:
        stop.child_pid = run.pid
        raise
    finally:
        if not reaped:  # stopped by a signal (or any error here): the child's whole group goes with us
            _end(process.pid, processes)
            process.returncode = -signal.SIGKILL
            _close(process, readers)
    process.returncode = os.waitstatus_to_exitcode(status)
    _kill_group(process.pid)  # anything the child left behind in its group
    _close(process, readers)

    run.duration_s = time.monotonic() - started
    run.host_peak_gb = round(memory.rusage_peak_rss_gb(usage), 3)
    if os.WIFSIGNALED(status):
        run.signal = _signal_name(os.WTERMSIG(status))
    else:
        run.exit_code = os.WEXITSTATUS(status)
    run.result = classify(run, model, preset, device, config, synthetic, estimate_gb, max_memory_gb, timeout_s)
    return run


def _end(pid: int, processes: int) -> tuple[int, object]:
    """Stop a probe and reap it: (wait status, rusage). torchrun starts each process in a session of its
    own, so it gets SIGTERM first (it stops its processes, SIGKILL after 30 s) and the group SIGKILL only
    when it is still there after ``TORCHRUN_GRACE_S``."""
    try:
        if processes > 1:
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + TORCHRUN_GRACE_S
            while time.monotonic() < deadline:
                reaped, status, usage = os.wait4(pid, os.WNOHANG)
                if reaped:
                    return status, usage
                time.sleep(POLL_S)
        _kill_group(pid)
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:  # reaped already (a signal cut a first _end short after its wait)
        return signal.SIGKILL, None
    return status, usage


def _close(process: subprocess.Popen, readers: list[threading.Thread]) -> None:
    """Let the readers take what the ended child wrote, then close its pipes."""
    for reader in readers:
        reader.join(timeout=10)
    process.stdout.close()
    process.stderr.close()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(run: ProbeRun, model, preset, device, config, synthetic, estimate_gb, max_memory_gb, timeout_s) -> dict:
    """The child's own result if it printed one, else what the facts of its end say.

    On several processes (torchrun) the results of the ranks are merged (``probe.merge_results``) and the
    facts are those of the process torchrun names as the root cause of the failure: a rank killed by a
    signal outweighs the lost-connection error another rank then reports."""
    reported = parse_result_line("\n".join(run.stdout_lines))
    stderr_lines, failures = run.stderr_lines, []
    if run.processes > 1:
        from your_ai.train.launch import launcher_report

        stderr_lines, failures = launcher_report(run.stderr_lines)
    failed = failures[0] if failures else None
    died = run.signal or (failed and failed["signal"])
    where = f" (process {failed['rank']} of {run.processes})" if failed else ""
    if run.timed_out:
        phase = f", last phase: {run.last_phase}" if run.last_phase else ""
        result = _parent_result(model, preset, device, config, synthetic, estimate_gb, max_memory_gb, "timeout",
                                f"no result within {timeout_s:g} s{phase}; process group killed")
    elif reported is not None and (reported["status"] != "error" or not died):
        result = reported
        if run.signal:
            result.setdefault("notes", []).append(f"the probe was killed by {run.signal} after reporting")
    elif died == "SIGKILL":
        result = _parent_result(
            model, preset, device, config, synthetic, estimate_gb, max_memory_gb, "oom",
            f"killed by SIGKILL, most likely by the operating system's out-of-memory killer "
            f"(peak resident memory {run.host_peak_gb:.2f} GB){where}",
        )
    elif died:
        last = _last_lines(stderr_lines, 1)
        result = _parent_result(model, preset, device, config, synthetic, estimate_gb, max_memory_gb, "crashed",
                                f"crashed with {died}{where}" + (f": {last}" if last else ""))
    elif reported is not None:
        result = reported
    elif run.exit_code:
        last = _last_lines(stderr_lines, 3)
        code = failed["exit_code"] if failed and failed["exit_code"] is not None else run.exit_code
        result = _parent_result(model, preset, device, config, synthetic, estimate_gb, max_memory_gb, "error",
                                (last or f"the probe exited with code {code} and no message") + where)
    else:
        result = _parent_result(model, preset, device, config, synthetic, estimate_gb, max_memory_gb, "error",
                                "the probe exited without a result line")
    if result.get("estimate_gb") is None:
        result["estimate_gb"] = estimate_gb
    if run.host_peak_gb is not None:
        result["peak_host_gb"] = max(result.get("peak_host_gb") or 0.0, run.host_peak_gb)
    result["exit_code"] = run.exit_code
    result["signal"] = run.signal
    if run.processes > 1:
        result.update(processes=run.processes, strategy=result.get("strategy") or run.strategy)
        if failed:
            result["failed_process"] = failed["rank"]
    return result


def _last_lines(lines: list[str], count: int) -> str:
    meaningful = [line.strip() for line in lines if line.strip()]
    return " | ".join(meaningful[-count:])


def _parent_result(model, preset, device, config: FitConfig, synthetic, estimate_gb, max_memory_gb, status, error) -> dict:
    return new_result(model, device, config, synthetic, max_memory_gb, preset=preset, status=status, error=error,
                      estimate_gb=estimate_gb)


def _memory_released(run: ProbeRun) -> str:
    if run.timed_out:
        return "      [Memory released - subprocess killed]"
    return "      [Memory released - subprocess exited]"


# ---------------------------------------------------------------------------- result text

def result_text(result: dict) -> str:
    """What follows ``... `` on a model's line."""
    status = result["status"]
    estimate = result.get("estimate_gb")
    tags = [f"est {estimate:.1f} GB"] if estimate is not None else []
    if result.get("synthetic"):
        tags.append("synthetic")
    if (result.get("config") or {}).get("quantize"):
        tags.append(f"{result['config']['quantize']}-bit")
    processes = result.get("processes") or 1
    if processes > 1 and result.get("strategy"):
        tags.append(result["strategy"])
    suffix = f" [{', '.join(tags)}]" if tags else ""
    if status == "pass":
        if processes > 1:
            device = result.get("device")
            return (f"✓ Pass ({result['peak_memory_gb']:.1f} GB peak per {processes_word(device)}, "
                    f"{processes} {processes_word(device, processes)}){suffix}")
        return f"✓ Pass ({result['peak_memory_gb']:.1f} GB peak){suffix}"
    if status == "not_available":
        need = f" — would need ~{estimate:.0f} GB" if estimate is not None else ""
        command = result.get("download_command")
        return f"✗ Model not available{need}" + (f"; `{command}`" if command else f": {result['error']}")
    if status == "oom":
        return f"✗ OOM ({result['error']}){suffix}"
    if status == "over_budget":
        return f"✗ Over budget ({result['error']}){suffix}"
    if status == "timeout":
        return f"✗ Timeout ({result['error']}){suffix}"
    if status == "crashed":
        return f"✗ Crashed ({result['error']}){suffix}"
    return f"✗ Error: {result['error']}{suffix}"


def processes_word(device: str | None, count: int = 1) -> str:
    """What the processes of a fit test on several are: GPU(s) on CUDA, else process(es)."""
    if (device or "").startswith("cuda"):
        return "GPU" if count == 1 else "GPUs"
    return "process" if count == 1 else "processes"


def _line_prefix(index: int, total: int, candidate: Candidate) -> str:
    return f"[{index}/{total}] {candidate.label:20} ({candidate.params:4}) ... "


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

    def named(self, result: dict) -> dict:
        """``result`` with this model's names and size label (which a result the parent makes lacks for a
        model that is not a preset)."""
        result.update(self.ids())
        if self.params != "?":
            result["params"] = self.params
        return result


def candidate(name: str, synthetic: bool = False) -> Candidate:
    """``name`` (preset, hub id or directory) as the benchmark tests it, its shape read without loading
    weights (``models.model_shape``; a preset that is not on this machine: the preset's shape). A model
    that is not available or whose config has no usable shape becomes a candidate with its ``problem``;
    a name that is none of the three raises ``ValueError``."""
    from your_ai.model.errors import InvalidModelNameError, ModelResolutionError
    from your_ai.model.resolve import model_shape, short_label

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


def _problem_result(found: Candidate, device: str, config: FitConfig, synthetic: bool, max_memory_gb: float) -> dict:
    """The result of a model that cannot be tested: not available (with the download command), or an error."""
    from your_ai.model.errors import ModelNotAvailableError

    missing = isinstance(found.problem, ModelNotAvailableError)
    result = new_result(found.name, device, config, synthetic, max_memory_gb, preset=found.preset,
                        status="not_available" if missing else "error", error=str(found.problem))
    result["download_command"] = found.problem.download_command if missing else None
    return found.named(result)


def resolve_device(device: str | None) -> str:
    """The training device (cuda > mps > cpu, or the one asked for)."""
    if device == "cpu":
        return device
    from your_ai.hardware import pick_device

    return pick_device(device)


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
    optimize_steps: int | None = None,
    stream: TextIO | None = None,
    gpus: int = 1,
    strategy: str | None = None,
    cached: bool = False,
) -> dict:
    """Test each model in a subprocess, print one line per model, log every event; the report dict.

    ``models``: presets, hub ids and directories (default: the five benchmark presets); ``cached``: every
    causal LM in the local Hugging Face cache (``models.cached_causal_lms``) instead.
    ``gpus`` > 1: each fit test runs under torchrun on that many GPUs (CPU processes with ``device``
    "cpu"), the model replicated or sharded by ``strategy`` (``probe.fit_strategy``); the budget and the
    peaks are per GPU."""
    stream = stream or sys.stdout
    found = None
    if cached:
        from your_ai.model.resolve import cached_causal_lms

        found = cached_causal_lms()
        models = found.hub_ids
    candidates = benchmark_candidates(models, synthetic) if models or not cached else []
    check_processes(gpus, device)
    device = resolve_device(device)
    device_memory = memory.device_memory_gb(device)
    budget_source = "--max-memory"
    if max_memory_gb is None:
        max_memory_gb = memory.default_budget_gb(device)
        budget_source = f"80% of {device_memory:.1f} GB"
    safety_floor = safety_min_available_gb()
    run_id = new_run_id()
    log = EventLog(log_path, run_id)
    started = time.monotonic()
    log.log("benchmark_start", models=[c.name for c in candidates], max_memory_gb=round(max_memory_gb, 3),
            device=device, synthetic=synthetic, force=force, timeout_s=timeout_s, config=asdict(config),
            optimize=optimize, gpus=gpus, strategy=strategy or "auto")

    def say(text: str = "") -> None:
        stream.write(text + "\n")
        stream.flush()

    per = f" per {processes_word(device)}" if gpus > 1 else ""
    on = f"{device}, {gpus} {processes_word(device, gpus)} per model (strategy {strategy or 'auto'})" if gpus > 1 else device
    if found is not None:
        others = f"; {len(found.skipped)} other repo(s) skipped (not causal LMs)" if found.skipped else ""
        say(f"Hugging Face cache {found.cache}: {len(found.hub_ids)} causal LM(s){others}")
        if not found.hub_ids:
            say("Nothing to test: download a model with `hf download ORG/NAME`, or name models with --models")
    say(f"Benchmark: {len(candidates)} model(s), smallest first, on {on}; "
        f"budget {max_memory_gb:.2f} GB{per} ({budget_source})" + ("; synthetic random-weight models" if synthetic else ""))
    say(f"Fit test: batch {config.batch_size}, LoRA rank {config.lora_rank} on the last {config.lora_layers} layers, "
        f"sequence {config.seq_length or 1024}, {config.steps} steps; timeout {timeout_s:g} s per model")
    if log.path:
        say(f"Log: {log.path} (run {run_id})")
    say()

    results: list[dict] = []
    skipped: list[dict] = []
    stop_reason: str | None = None
    safety_stopped = False
    total = len(candidates)

    def skip(prefix: str, model: Candidate, reason: str) -> None:
        say(f"{prefix}- Skipped ({reason})")
        skipped.append({**model.ids(), "params": model.params, "reason": reason})

    model = progress = None
    try:
        for index, model in enumerate(candidates, start=1):
            prefix = _line_prefix(index, total, model)
            if stop_reason:
                skip(prefix, model, stop_reason)
                continue
            available = memory.system_memory_gb()[1]
            if not force and available < safety_floor:
                safety_stopped = True
                stop_reason = "safety stop"
                say(f"SAFETY STOP: only {available:.1f} GB of system memory is available (under {safety_floor:g} GB); "
                    f"stopping before {model.label}. Close other programs, or pass --force to go on anyway.")
                log.log("safety_stop", **model.ids(), available_gb=round(available, 3), min_available_gb=safety_floor)
                skip(prefix, model, stop_reason)
                continue
            if model.problem:
                result = _problem_result(model, device, config, synthetic, max_memory_gb)
                say(f"{prefix}{result_text(result)}")
                log.log("model_unusable", **model.ids(), index=index, total=total, status=result["status"],
                        error=result["error"])
                results.append(result)
                continue

            architecture, located = model.architecture, model.located
            model_strategy = fit_strategy(strategy, architecture, device, config, max_memory_gb, gpus)
            estimate_gb = round(per_process_estimate_gb(architecture, device, config, max_memory_gb, gpus,
                                                        model_strategy), 3)
            log.log("model_start", **model.ids(), index=index, total=total, estimate_gb=estimate_gb,
                    available_gb=round(available, 3))
            progress = ProgressLine(stream, prefix)
            progress.start()

            weights = memory.weights_gb(architecture, device, config.quantize)
            if model_strategy == "fsdp":  # each process holds its share
                weights -= memory.sharding_saves_gb(architecture, device, gpus, config.quantize)
            if located and not force and weights > max_memory_gb:
                share = (f" per {processes_word(device)} (sharded over {gpus}, with the layers FSDP gathers whole)"
                         if model_strategy == "fsdp" else "")
                result = _parent_result(
                    model.name, model.preset, device, config, synthetic, estimate_gb, max_memory_gb, "over_budget",
                    f"the weights alone need {weights:.2f} GB{share} > {max_memory_gb:.2f} GB budget; not loaded, "
                    f"--force tries anyway",
                )
                result.update(processes=gpus, strategy=model_strategy)
                model.named(result)
                progress.finish(result_text(result))
                log.log("over_budget_precheck", **model.ids(), weights_gb=round(weights, 3),
                        max_memory_gb=max_memory_gb)
                results.append(result)
            else:
                run = run_probe_subprocess(
                    model.name, max_memory_gb, device, config, timeout_s=timeout_s, synthetic=synthetic,
                    preset=model.preset, estimate_gb=estimate_gb,
                    on_start=lambda r, ids=model.ids(): log.log("subprocess_start", **ids, pid=r.pid,
                                                                command=r.command),
                    on_tick=progress.update, processes=gpus, strategy=model_strategy,
                )
                result = model.named(run.result)
                result["duration_s"] = round(run.duration_s, 3)
                progress.finish(result_text(result))
                if run.spawn_error:
                    log.log("subprocess_spawn_error", **model.ids(), error=run.spawn_error, command=run.command)
                else:
                    say(_memory_released(run))
                    event = "subprocess_success" if result["success"] else "subprocess_failed"
                    log.log(event, **model.ids(), status=result["status"], error=result.get("error"),
                            peak_memory_gb=result.get("peak_memory_gb"), result=result, **run.facts())
                results.append(result)
            if result["status"] in STOPPING_STATUSES:
                stop_reason = (
                    f"{model.label} {'ran out of memory' if result['status'] == 'oom' else 'went over the budget'}; "
                    "larger models will not fit"
                )
        passed = [r for r in results if r["success"]]
        recommended = passed[-1]["model"] if passed else None
        if optimize and passed:
            _optimize_passed(passed, max_memory_gb, device, timeout_s, synthetic, quick, optimize_steps, config, log,
                             stream, say, gpus, strategy)
    except KeyboardInterrupt as stop:  # Stopped: SIGINT or SIGTERM; the running fit test was killed
        signal_name = stop.signal_name if isinstance(stop, Stopped) else "SIGINT"
        if isinstance(stop, Stopped) and stop.model is None and model is not None:
            stop.model = model.label
        if progress is not None and progress.open:
            progress.finish(f"✗ Stopped by {signal_name}")
        log.log("benchmark_interrupted", signal=signal_name, preset=getattr(stop, "model", None),
                pid=getattr(stop, "child_pid", None), tested=len(results), passed=sum(r["success"] for r in results))
        raise
    for result in results:
        result.setdefault("optimal_config", None)

    report = {
        "run_id": run_id,
        "created_at": now_iso(),
        "max_memory_gb": round(max_memory_gb, 3),
        "device": device,
        "device_memory_gb": round(device_memory, 3),
        "synthetic": synthetic,
        "gpus": gpus,
        "strategy": strategy or "auto",
        "config": asdict(config),
        "recommended": recommended,
        "alternatives": [r["model"] for r in reversed(passed[:-1])],
        "models": results,
        "skipped": skipped,
        "safety_stop": safety_stopped,
        "log": str(log.path) if log.path else None,
    }
    if found is not None:
        report["cache"] = {"path": str(found.cache), "models": found.hub_ids, "skipped": found.skipped}
    elif not passed:
        report["untested_cached"] = _untested_cached(results)
    _print_summary(report, say)
    log.log("benchmark_complete", tested=len(results), passed=len(passed), failed=len(results) - len(passed),
            skipped=len(skipped), recommended=recommended, duration_s=round(time.monotonic() - started, 3))
    if output:
        path = write_json_atomic(output, report)
        say(f"Results saved to {path}")
    return report


def _optimize_passed(passed, max_memory_gb, device, timeout_s, synthetic, quick, steps, config, log, stream, say,
                     gpus=1, strategy=None) -> None:
    from your_ai.fit.sweep import DEFAULT_STEPS, run_optimize

    for result in passed:
        say()
        say(f"Optimizing {result['model']} ({'quick' if quick else 'full'} grid)")
        log.log("optimize_start", model=result["model"], preset=result["preset"])
        outcome = run_optimize(
            result["model"], max_memory_gb=max_memory_gb, device=device, quick=quick,
            steps=steps or DEFAULT_STEPS, timeout_s=timeout_s, synthetic=synthetic,
            seq_length=config.seq_length, grad_checkpoint=config.grad_checkpoint, step_mode=config.step_mode,
            stream=stream, say=say, gpus=gpus, strategy=strategy, quantize=config.quantize,
        )
        result["optimal_config"] = outcome["best"] and {**outcome["best"], "profile": outcome["path"]}
        log.log("optimize_complete", model=result["model"], preset=result["preset"],
                optimal_config=result["optimal_config"], results=outcome["results"])


def train_flags(result: dict) -> str:
    """The ``train`` flags that reproduce how a fit test held the model: ``--gpus N [--strategy fsdp] ``
    when it ran on several processes, ``--quantize 4 `` when quantized; else nothing."""
    quantize = result.get("quantize") or (result.get("config") or {}).get("quantize")
    flags = f"--quantize {quantize} " if quantize else ""
    processes = result.get("processes") or 1
    if processes <= 1:
        return flags
    device = " --device cpu" if not (result.get("device") or "").startswith("cuda") else ""
    strategy = " --strategy fsdp" if result.get("strategy") == "fsdp" else ""
    return f"--gpus {processes}{device}{strategy} {flags}"


def check_processes(gpus: int, device: str | None) -> None:
    """``--gpus N`` (N > 1) is refused, with ``distributed.check_gpus``' message as a ValueError, on a machine
    that cannot run N processes (fewer CUDA GPUs, MPS); ``device`` "cpu" runs N CPU processes."""
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"--gpus {gpus!r} must be a whole number >= 1")
    if gpus > 1:
        from your_ai.train.launch import DistributedError, check_gpus

        try:
            check_gpus(gpus, device)
        except DistributedError as error:
            raise ValueError(str(error)) from None


def _untested_cached(results: list[dict]) -> list[str]:
    """The causal LMs in the local cache that were not among ``results`` (what ``--cached`` would test)."""
    from your_ai.model.resolve import cached_causal_lms

    tested = {r.get("model_name") for r in results}
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
        say(f"Train it with: your-ai train {train_flags(passed[-1])}--model {report['recommended']}")
        return
    say("No models passed benchmark.")
    missing = [r for r in results if r["status"] == "not_available"]
    if missing:
        say()
        say(f"⚠️  {len(missing)} model(s) not found locally")
        say()
        say("The benchmark needs the models on this machine. Options:")
        say("  1. Download into the Hugging Face cache ($HF_HUB_CACHE, default ~/.cache/huggingface/hub):")
        for result in missing:
            say(f"       {result.get('download_command') or 'hf download ' + result['model_name']}")
        say("  2. Test a model you already have: your-ai benchmark --models /path/to/model,ORG/NAME (or --cached)")
        say("  3. Test the fit without downloading anything: your-ai benchmark --synthetic")
    untested = report.get("untested_cached") or []
    if untested:
        say()
        say(f"In your Hugging Face cache, not tested: {', '.join(untested)}; "
            "test them with: your-ai benchmark --cached")
    if report.get("log"):
        say(f"Details of every attempt: {report['log']}")

"""A fit test's result: one typed record, the one line a fit test prints, how several processes' results
merge, and the words a result is shown with.

The fit test (``your_ai.fit.child``) prints its result on stdout as ``FIT_TEST_RESULT:{json}`` and its
progress on stderr as ``FIT_TEST_PHASE:<phase>`` lines; the parent (``your_ai.fit.runner``) reads both.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field, fields, replace

from your_ai.step.memory import MLX_DEVICE

RESULT_PREFIX = "FIT_TEST_RESULT:"
PHASE_PREFIX = "FIT_TEST_PHASE:"

# Which result tells what happened, most telling first: a process's own out-of-memory error is the cause,
# the lost connection another process then reports is its symptom.
MERGE_ORDER = ("oom", "over_budget", "not_available", "crashed", "timeout", "error", "pass")
STOPPING_STATUSES = ("oom", "over_budget")  # a benchmark or sweep skips what is at least as large after these
PEAK_FIELDS = ("peak_memory_gb", "peak_device_gb", "peak_host_gb")
MIN_STEPS_FOR_SPREAD = 3
# How MLX says an allocation failed: Metal's buffer and command-buffer errors, the CPU build's malloc.
MLX_OUT_OF_MEMORY_MARKERS = ("[metal::malloc]", "Insufficient Memory", "kIOGPUCommandBufferCallbackErrorOutOfMemory",
                             "[malloc] Unable to allocate")


@dataclass
class FitResult:
    """What one fit test found. ``status``: one of ``MERGE_ORDER``; ``config``: the config as run (sequence,
    layers used, dtype, step mode filled in by the fit test). Fields after ``duration_s`` are left out of the
    JSON while they are None (they exist only for some results)."""

    model: str  # as given: preset, hub id or directory
    preset: str | None
    model_name: str  # the hub id, else the directory
    params: str | None  # 7B, 135M
    config: dict
    device: str | None
    max_memory_gb: float | None
    synthetic: bool
    status: str = "error"
    success: bool = False
    error: str | None = None
    peak_memory_gb: float | None = None  # the device's peak, else the host's
    peak_device_gb: float | None = None
    peak_host_gb: float | None = None
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    estimate_gb: float | None = None
    processes: int = 1
    strategy: str | None = None  # ddp or fsdp on several processes
    notes: list[str] = field(default_factory=list)
    download_command: str | None = None
    exit_code: int | None = None  # set by the parent, from how the fit test's process ended
    signal: str | None = None
    optimal_config: dict | None = None  # set by benchmark --optimize
    duration_s: float | None = None
    # ---- present only when set
    load_time_s: float | None = None
    architecture: str | None = None
    parameter_count: int | None = None
    step_time_iqr_s: list[float] | None = None
    step_times_s: list[float] | None = None
    rank: int | None = None  # this process, in a fit test on several
    failed_process: int | None = None  # the process whose failure ended a fit test on several

    def to_dict(self) -> dict:
        """The JSON form: every field up to ``duration_s``, the later ones when set."""
        data = asdict(self)
        for name in OPTIONAL_FIELDS:
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FitResult:
        """A result from its JSON form (keys it does not know are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def finish(self, status: str, error: str | None = None) -> None:
        self.status, self.error, self.success = status, error, status == "pass"


OPTIONAL_FIELDS = tuple(f.name for f in fields(FitResult))[[f.name for f in fields(FitResult)].index("duration_s") + 1:]


def phase(name: str) -> None:
    """Tell the parent what the fit test is doing (one stderr line)."""
    print(f"{PHASE_PREFIX}{name}", file=sys.stderr, flush=True)


def emit_result(result: FitResult) -> None:
    """Print the one machine-readable result line."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result.to_dict()) + "\n")
    sys.stdout.flush()


def parse_result_line(text: str) -> FitResult | None:
    """The result a fit test printed in ``text`` (its stdout), or None if it printed none. A fit test on
    several processes prints rank 0's result and the result of each process that failed: they are merged
    (``merge_results``)."""
    found = []
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                found.append(FitResult.from_dict(json.loads(line[len(RESULT_PREFIX):])))
            except (json.JSONDecodeError, TypeError):
                continue
    return merge_results(found)


def merge_results(results: list[FitResult]) -> FitResult | None:
    """One result from the results of several processes: the most telling status (``MERGE_ORDER``), with
    the largest peaks of all."""
    if len(results) <= 1:
        return results[0] if results else None
    order = {status: index for index, status in enumerate(MERGE_ORDER)}
    merged = replace(min(results, key=lambda r: order.get(r.status, len(MERGE_ORDER))))
    for name in PEAK_FIELDS:
        values = [getattr(r, name) for r in results if getattr(r, name) is not None]
        if values:
            setattr(merged, name, max(values))
    return merged


def mlx_out_of_memory(text: str) -> bool:
    """Whether ``text`` (an error message, a line of stderr) is MLX failing to allocate memory."""
    return any(marker in text for marker in MLX_OUT_OF_MEMORY_MARKERS)


# ---------------------------------------------------------------------------- speed

def record_step_times(result: FitResult, times: list[float], tokens_per_step: int) -> None:
    """A fit test that ran its steps: passed, with the median step time (the first step left out,
    ``timed_steps``), its spread, the tokens per second of ``tokens_per_step`` and every step's seconds."""
    step_time, spread = step_time_summary(timed_steps(times))
    result.status = "pass"
    result.step_time_s = round(step_time, 4)
    result.step_time_iqr_s = spread and [round(bound, 4) for bound in spread]
    result.tokens_per_s = round(tokens_per_step / step_time, 1)
    result.step_times_s = [round(t, 4) for t in times]


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


# ---------------------------------------------------------------------------- words

FAILURE_WORDS = {"oom": "OOM", "over_budget": "Over budget", "timeout": "Timeout", "crashed": "Crashed"}


def result_text(result: FitResult) -> str:
    """What follows ``... `` on a model's line."""
    estimate = result.estimate_gb
    if result.status == "pass":
        per = (f" per {processes_word(result.device)}, {result.processes} "
               f"{processes_word(result.device, result.processes)}") if result.processes > 1 else ""
        return f"✓ Pass ({result.peak_memory_gb:.1f} GB peak{per}){_tags(result)}"
    if result.status == "not_available":
        need = f" — would need ~{estimate:.0f} GB" if estimate is not None else ""
        command = result.download_command
        return f"✗ Model not available{need}" + (f"; `{command}`" if command else f": {result.error}")
    if result.status in FAILURE_WORDS:
        return f"✗ {FAILURE_WORDS[result.status]} ({result.error}){_tags(result)}"
    return f"✗ Error: {result.error}{_tags(result)}"


def _tags(result: FitResult) -> str:
    tags = [f"est {result.estimate_gb:.1f} GB"] if result.estimate_gb is not None else []
    if result.synthetic:
        tags.append("synthetic")
    if result.config.get("quantize"):
        tags.append(f"{result.config['quantize']}-bit")
    if result.config.get("dora"):
        tags.append("DoRA")
    if result.processes > 1 and result.strategy:
        tags.append(result.strategy)
    return f" [{', '.join(tags)}]" if tags else ""


def processes_word(device: str | None, count: int = 1) -> str:
    """What the processes of a fit test on several are: GPU(s) on CUDA, else process(es)."""
    if (device or "").startswith("cuda"):
        return "GPU" if count == 1 else "GPUs"
    return "process" if count == 1 else "processes"


def train_flags(*, processes: int = 1, device: str | None = None, strategy: str | None = None,
                quantize: int | None = None, dora: bool = False) -> str:
    """The ``train`` flags that reproduce how a fit test held the model: ``--gpus N [--strategy fsdp] ``
    when it ran on several processes, ``--quantize 4 `` when quantized, ``--dora `` for DoRA adapters,
    ``--engine mlx `` on MLX; else nothing."""
    flags = (f"--quantize {quantize} " if quantize else "") + ("--dora " if dora else "")
    if device == MLX_DEVICE:
        flags = f"--engine mlx {flags}"
    if processes <= 1:
        return flags
    on_cpu = " --device cpu" if not (device or "").startswith("cuda") else ""
    sharded = " --strategy fsdp" if strategy == "fsdp" else ""
    return f"--gpus {processes}{on_cpu}{sharded} {flags}"

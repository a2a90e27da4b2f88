"""Starting the training processes: ``your-ai train --gpus N`` (and ``benchmark --gpus N``) run the same
command under ``python -m torch.distributed.run --standalone --nproc_per_node N``; torchrun's report of a
failed process is read back into the processes' own lines and the failures.
"""

from __future__ import annotations

import re
import signal
import sys

import torch

from your_ai.train.parallel import DistributedError, world_from_env

def check_gpus(count: int, device: str | None) -> None:
    """Refuse ``--gpus count`` on a machine that cannot run it; ``--device cpu`` runs CPU processes."""
    if count < 1:
        raise DistributedError(f"--gpus must be a whole number >= 1 (got {count})")
    if world_from_env().distributed:
        raise DistributedError("--gpus starts the processes itself; under torchrun or accelerate launch leave it out")
    kind = (device or "").split(":")[0]
    if kind == "cpu":
        return
    if kind == "mps":
        raise DistributedError("--gpus needs CUDA GPUs; MPS cannot be shared by several processes")
    if ":" in (device or ""):
        raise DistributedError(f"--gpus {count} picks one GPU per process; pass --device cuda, not {device}")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < count:
        raise DistributedError(
            f"--gpus {count}: PyTorch sees {available} CUDA GPU(s) here; pass --gpus {available} or fewer"
            if available else
            f"--gpus {count}: PyTorch sees no CUDA GPU here (--device cpu runs {count} CPU processes instead)"
        )


def launch_command(count: int, arguments: list[str], command: str = "train") -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node count -m your_ai <command> ...``
    (``train``, or ``benchmark`` for a fit test on ``count`` processes)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(count),
            "-m", "your_ai", command, *arguments]


_LOG_LINE = re.compile(r"^[WIEF]\d{4} \d\d:\d\d:\d\d")  # torch's own log lines (torchrun's warnings)


def launcher_report(stderr_lines: list[str]) -> tuple[list[str], list[dict]]:
    """Split torchrun's stderr into the processes' own lines and the failures its report lists.

    When a process fails, torchrun stops the others and ends with a ``ChildFailedError`` report
    naming each failed process: ``rank``, ``exitcode`` (negative: killed by that signal) and
    whether it is the root cause (the first failure). Returns (the processes' lines, without
    torchrun's traceback and log lines; the failures as ``{"rank", "exit_code", "signal",
    "root_cause"}``, the root cause first). No report: all lines and ``[]``.
    """
    start = len(stderr_lines)
    for index, line in enumerate(stderr_lines):
        if line.startswith("Traceback (most recent call last):") and any(
                "torch/distributed/run.py" in later for later in stderr_lines[index + 1:index + 8]):
            start = index
    own = [line for line in stderr_lines[:start] if not _LOG_LINE.match(line)]
    failures: list[dict] = []
    root = False
    for line in stderr_lines[start:]:
        text = line.strip()
        if text.startswith("Root Cause"):
            root = True
        elif text.startswith("rank") and ":" in text:
            found = re.match(r"rank\s*:\s*(\d+)", text)
            if found:
                failures.append({"rank": int(found.group(1)), "exit_code": None, "signal": None, "root_cause": root})
        elif text.startswith("exitcode") and failures:
            found = re.match(r"exitcode\s*:\s*(-?\d+)", text)
            if found:
                code = int(found.group(1))
                failures[-1]["exit_code"] = code if code >= 0 else None
                failures[-1]["signal"] = _signal_name(-code) if code < 0 else None
    failures.sort(key=lambda failure: not failure["root_cause"])
    return own, failures


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


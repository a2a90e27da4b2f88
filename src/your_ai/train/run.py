"""What a training run is, whichever engine runs it: how far it got (``Progress``), its result
(``TrainResult``), the answer to a ``--resume`` of a finished run, the notes on the defaulted settings,
the rule for periodic work, what follows every step (``StepEnd``), and the stop on SIGINT / SIGTERM. Nothing here loads a model or imports an
engine.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from your_ai.data.examples import DataPosition
from your_ai.train import defaults as run_defaults
from your_ai.train.args import MemoryLimitExceeded, TrainingArgs, default_choice
from your_ai.train.plan import RunPlan


@dataclass
class Progress:
    """How far a run got: what a checkpoint keeps beside the adapter, the optimizer and the schedule."""

    step: int = 0
    position: DataPosition = field(default_factory=DataPosition)  # where the next global batch starts
    best_val_loss: float | None = None
    tokens_seen: int = 0
    elapsed_before: float = 0.0  # seconds trained by earlier invocations (a resumed run)
    resumed_from: int | None = None  # the step of the checkpoint this invocation started from

    def elapsed(self, started: float) -> float:
        """Seconds trained: earlier invocations of a resumed run, and this one since ``started``
        (a ``time.perf_counter()`` reading)."""
        return self.elapsed_before + time.perf_counter() - started


@dataclass
class TrainResult:
    output_dir: Path  # the final adapter and tokenizer are here
    steps: int
    final_loss: float | None
    best_val_loss: float | None
    peak_memory_gb: float
    elapsed_s: float
    resumed_from: int | None  # step of the checkpoint a resumed run started from
    stopped_early: bool  # ``stop_after`` was reached before max_steps
    normaliser: float | None  # mean distrust value of the training set (weighted mode)
    notes: list[str] = field(default_factory=list)
    step_mode: dict | None = None  # the StepMode the run used (your_ai.step.modes), with its reason
    world_size: int = 1  # training processes (data-parallel under torchrun)
    rank: int = 0  # this process's rank; only rank 0 prints and writes
    max_steps: int | None = None
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM": stopped after a step, with a checkpoint
    resume_command: str | None = None  # the command that continues a stopped run
    already_finished: bool = False  # --resume of a run that had done all its steps: nothing was done

    @property
    def exit_code(self) -> int:
        """0; 128 + the signal's number for a run stopped by SIGINT (130) or SIGTERM (143)."""
        return 128 + signal.Signals[self.stopped_by].value if self.stopped_by else 0


def finished_result(planned: RunPlan) -> TrainResult:
    """``--resume`` of a run that already did all its steps: nothing loaded, nothing written."""
    state = planned.state
    return TrainResult(output_dir=planned.output_dir, steps=state["step"], final_loss=None,
                       best_val_loss=state.get("best_val_loss"), peak_memory_gb=0.0, elapsed_s=0.0,
                       resumed_from=state["step"], stopped_early=False, normaliser=state.get("normaliser"),
                       max_steps=planned.args.max_steps, already_finished=True)


def settings_notes(given: TrainingArgs, planned: RunPlan) -> list[str]:
    """Where the defaulted settings of a new run came from; a warm-up as long as the run."""
    notes = []
    if planned.checkpoint is None:
        explained = default_choice(given).describe(asdict(given), planned.args)
        if explained:
            notes.append(explained)
    warning = run_defaults.warmup_warning(planned.args.warmup_steps, planned.args.max_steps)
    if warning:
        notes.append(warning)
    return notes


def due(step: int, every: int, max_steps: int) -> bool:
    """Every ``every`` steps, and at the last step."""
    return step % every == 0 or step == max_steps


class StepEnd:
    """What follows every optimizer step, in either engine: the memory limit, the checkpoint ``--save-every``
    asks for, and the decision to stop here (a signal, or ``stop_after``) with this step saved."""

    def __init__(self, args: TrainingArgs, save: Callable[[], Path], limit_gb: float, stop_after: int | None,
                 last_saved: int | None):
        self.args, self.save, self.limit_gb, self.stop_after = args, save, limit_gb, stop_after
        self.last_saved = last_saved

    def stops(self, step: int, peak_gb: float, stopped_by: str | None) -> bool:
        """Check and save after ``step``; True when the run stops here (its checkpoint written)."""
        args = self.args
        if peak_gb > self.limit_gb:
            raise MemoryLimitExceeded(peak_gb, self.limit_gb, step, self.save())
        if due(step, args.save_every, args.max_steps):
            self.save()
            self.last_saved = step
        if stopped_by or (self.stop_after is not None and self.stop_after <= step < args.max_steps):
            if self.last_saved != step:
                self.save()
            return True
        return False


class StopOnSignal:
    """SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption) during the loop: the step in progress
    finishes, a checkpoint is written and the run stops. Further signals are ignored until the process
    exits, so a second Ctrl-C cannot cut the checkpoint (or the message after it) short. Installed from
    the main thread only."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, quiet: bool = False):
        self.received = 0  # the first signal's number
        self.quiet = quiet
        self.previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}

    def restore(self) -> None:
        """The handlers as they were, unless a signal came: then the run is stopping and stays deaf to
        further signals (the caller exits; the CLI ignores them while the interpreter shuts down)."""
        if self.received:
            return
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def _handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if not self.received:
            self.received = number
            message = f"{name}: finishing this step, then saving a checkpoint and stopping"
        else:
            message = f"{name} ignored: the run is saving its checkpoint and stopping"
        if not self.quiet:
            print(f"\n{message}", file=sys.stderr, flush=True)

    def agreed(self, all_max: Callable[[float], float] = float) -> str | None:
        """The signal's name when any process received one (``all_max``: the largest value over the
        processes, each taking part, so all stop at the same step; one process: the value); ``None`` otherwise."""
        number = int(all_max(float(self.received)))
        return signal.Signals(number).name if number else None

"""What a run reports: the loss parts and tokens since the last report (``MetricsWindow``), the progress bar,
log lines and the records fed to the run's sinks, the metrics JSONL, TensorBoard and the trackers
(``Reporter``; ``QuietReporter`` on the processes that do not write; ``open_reporting``, ``report_result``),
and the plan printed before the first step.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from your_ai.objective.distrust import LossParts
from your_ai.train.args import TrainingArgs
from your_ai.train.outputs import METRICS_FILE
from your_ai.train.sinks import Sinks, open_sinks, parse_report_to


class MetricsWindow:
    """Loss parts and tokens since the last report."""

    def __init__(self) -> None:
        self.total = self.cross_entropy = self.distrust = 0.0
        self.tokens, self.steps = 0, 0.0
        self.started = time.perf_counter()

    def add(self, parts: LossParts, tokens: int, grad_accum: int) -> None:
        self.total += float(parts.total) / grad_accum
        self.cross_entropy += float(parts.cross_entropy) / grad_accum
        self.distrust += float(parts.distrust) / grad_accum
        self.tokens += tokens
        self.steps += 1.0 / grad_accum

    def loss(self) -> float:
        return self.total / max(self.steps, 1e-9)

    def metrics(self) -> dict[str, float]:
        steps = max(self.steps, 1e-9)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return {
            "loss": self.total / steps,
            "cross_entropy": self.cross_entropy / steps,
            "distrust": self.distrust / steps,
            "tokens_per_second": self.tokens / seconds,
        }


class QuietReporter:
    """The reporter of a process that does not write: it reports nothing."""

    def train(self, *values) -> None:
        pass

    def eval(self, *values) -> None:
        pass

    def close(self) -> None:
        pass


class Reporter:
    """Progress bar and log lines on the console; each train and eval record to the run's ``sinks``."""

    def __init__(self, console, sinks: Sinks, args: TrainingArgs, start_step: int):
        self.console = console
        self.sinks = sinks
        self.progress = Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), console=console, transient=True,
        )
        self.task = self.progress.add_task("train", total=args.max_steps, completed=start_step, status="")
        self.max_steps = args.max_steps
        self.step_mode = args.step_mode
        self.progress.start()

    def train(self, step, epoch, window: MetricsWindow, learning_rate, grad_norm, peak_gb, elapsed) -> None:
        values = window.metrics()
        record = {"kind": "train", "step": step, "epoch": epoch, **values, "learning_rate": learning_rate,
                  "grad_norm": grad_norm, "peak_memory_gb": peak_gb, "elapsed_s": elapsed, "step_mode": self.step_mode}
        self.sinks.record(record)
        line = (f"step {step}/{self.max_steps} | loss {values['loss']:.4f} | ce {values['cross_entropy']:.4f} | "
                f"distrust {values['distrust']:.2f} | lr {learning_rate:.2e} | grad norm {grad_norm:.3f} | "
                f"{values['tokens_per_second']:.0f} tok/s | peak {peak_gb:.2f} GB")
        self.progress.console.print(line, highlight=False)
        self.progress.update(self.task, completed=step, status=f"loss {values['loss']:.4f}")

    def eval(self, step: int, values: dict, saved_best: bool) -> None:
        self.sinks.record({"kind": "eval", "step": step, **values})
        best = " (best so far, saved to best/)" if saved_best else ""
        self.progress.console.print(
            f"step {step}: val loss {values['val_loss']:.4f} | val ce {values['val_cross_entropy']:.4f}{best}",
            highlight=False,
        )

    def close(self) -> None:
        """The progress bar goes; the sinks stay open for the summary (``report_result``)."""
        self.progress.stop()


def open_reporting(args: TrainingArgs, output_dir: Path, start_step: int, resumed: bool, writer: bool = True) -> Sinks:
    """The sinks of a run: the metrics file (``--metrics-file``) and ``--report-to``'s, which get the resolved
    settings as the run's config; none on a process that does not write. Use it as a ``with`` block."""
    if not writer:
        return Sinks([])
    metrics_path = Path(args.metrics_file) if args.metrics_file else output_dir / METRICS_FILE
    return open_sinks(metrics_path, output_dir, parse_report_to(args.report_to, args.tensorboard), asdict(args),
                      start_step, resumed, project=args.project, run_name=args.run_name)


def report_result(sinks: Sinks, result) -> None:
    """The run's summary (``TrainResult``'s plain values) to the sinks, which are then closed with its exit code."""
    values = {key: value for key, value in asdict(result).items()
              if value is None or isinstance(value, (int, float, str, bool))}
    if result.step_mode:
        values["step_mode"] = result.step_mode["name"]
    sinks.summary(values)
    sinks.close(result.exit_code)


def print_plan(console, args: TrainingArgs, model_line: str, trainable: int, data, notes: list[str],
               resumed_from: int | None, limit_gb: float, step_mode_reason: str) -> None:
    """What the run will do, before its first step: model (``model_line``: its architecture, dtype and device),
    data, LoRA (``trainable`` parameters) and batch, objective, memory, step mode."""
    files, objective = data.files, data.objective
    n_train, n_val = len(data.train_examples), len(data.val_examples)
    console.print(f"Model: {args.model} ({model_line})", highlight=False)
    console.print(f"Data: {files.train} ({n_train} records)" + (f", validation {files.val} ({n_val})" if files.val else ""),
                  highlight=False)
    for use in data.token_caches:
        console.print(f"Tokenized cache {use.status}: {use.path}", highlight=False)
    console.print(
        f"{'DoRA' if args.dora else 'LoRA'}: rank {args.lora_rank}, alpha {args.lora_settings().effective_alpha:g}, last {args.lora_layers} layers, "
        f"{trainable:,} trainable parameters | batch {args.batch_size} x {args.grad_accum}, seq {args.max_seq_length}, "
        f"lr {args.learning_rate:g}, {args.max_steps} steps",
        highlight=False,
    )
    if objective.weighting is not None:
        console.print(
            f"Objective: weighted (lambda {objective.lambda_weight:g}, alpha {objective.alpha:g}); normaliser "
            f"d_bar = {objective.weighting.normaliser:.4f} (mean distrust value over {n_train} training records)",
            highlight=False,
        )
    else:
        console.print(
            f"Objective: additive (CE + {objective.lambda_weight:g} * sum d): the distrust term is a constant and "
            f"changes no gradient", highlight=False,
        )
    console.print(f"Memory limit: {limit_gb:.2f} GB | output: {args.output_dir}", highlight=False)
    console.print(f"Step mode: {step_mode_reason}", highlight=False)
    if resumed_from is not None:
        console.print(f"Resuming from step {resumed_from}", highlight=False)
    for note in notes:
        console.print(f"Note: {note}", highlight=False)

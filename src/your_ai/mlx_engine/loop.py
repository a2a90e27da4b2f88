"""``train --engine mlx``: the run ``your_ai.train`` plans, trained in MLX.

Everything above the step is ``train``'s own: the arguments and defaults, the run plan and output
directory, the records, their tokenization and order (``BatchSampler``), the objective and its weights
normalised over the training set, the schedule (warm-up and cosine decay, transformers' formula), the
console lines, metrics JSONL, TensorBoard and the trackers (``--report-to``), the stop on SIGINT / SIGTERM and the summary. The step is MLX's:
mlx-lm's model and LoRA layers, ``nn.value_and_grad`` over the micro-batches, the gradients clipped to
``--max-grad-norm``, AdamW (PyTorch's update: bias-corrected, decoupled weight decay).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, replace

import mlx.core as mx
import mlx.optimizers as optim
from mlx import nn
from mlx.utils import tree_map
from rich.console import Console
from transformers.optimization import _get_cosine_schedule_with_warmup_lr_lambda

from your_ai.data.examples import BatchSampler, DataPosition
from your_ai.mlx_engine.checkpoints import MlxCheckpointer
from your_ai.mlx_engine.loss import (
    MlxBatch,
    batch_loss,
    evaluate,
    loss_parts,
    make_batch,
)
from your_ai.mlx_engine.model import MlxModel, load_mlx_model, prepare_for_training
from your_ai.model.load import load_tokenizer
from your_ai.model.resolve import resolve_model
from your_ai.objective.distrust import LossParts
from your_ai.step.memory import MLX_DEVICE, PeakMemory, default_budget_gb
from your_ai.train.args import (
    TrainingArgs,
    TrainingArgsError,
    TrainingError,
    check_lora_rank,
    resume_command,
)
from your_ai.train.plan import RunData, RunPlan, prepare_output_dir, read_run_data
from your_ai.train.report import (
    MetricsWindow,
    Reporter,
    open_reporting,
    print_plan,
    report_result,
)
from your_ai.train.run import (
    Progress,
    StepEnd,
    StopOnSignal,
    TrainResult,
    due,
    settings_notes,
)
from your_ai.train.run_file import write_run_file
from your_ai.train.sinks import Sinks

STEP_MODE = {"name": "plain", "reason": "plain: the MLX engine's step (mlx-lm's forward through the full logits; "
                                        "--grad-checkpoint recomputes each layer in the backward pass)"}

PEAK = PeakMemory(MLX_DEVICE)  # MLX counts one peak per process: reset at the start of the run


@dataclass
class MlxRun:
    """A run set up to train in MLX: its settings and data, the model, optimizer and writer, its progress."""

    args: TrainingArgs
    planned: RunPlan
    data: RunData
    loaded: MlxModel
    optimizer: optim.Optimizer
    checkpointer: MlxCheckpointer
    progress: Progress
    limit_gb: float
    console: Console
    pad_id: int
    started: float
    notes: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return self.progress.elapsed(self.started)

    def learning_rate(self) -> float:
        """The schedule's learning rate for the next step (the torch engine's ``get_cosine_schedule_with_warmup``)."""
        factor = _get_cosine_schedule_with_warmup_lr_lambda(
            self.progress.step, num_warmup_steps=self.args.warmup_steps, num_training_steps=self.args.max_steps,
            num_cycles=0.5)
        return self.args.learning_rate * factor

    def save(self):
        progress = self.progress
        return self.checkpointer.save(progress.step, {
            "position": asdict(progress.position), "best_val_loss": progress.best_val_loss,
            "tokens_seen": progress.tokens_seen, "elapsed_s": self.elapsed()})


def train(given: TrainingArgs, planned: RunPlan, *, stop_after: int | None = None, console=None) -> TrainResult:
    """Train the planned run in MLX (``your_ai.train.loop.train`` plans it and hands it here); the same
    contract: ``stop_after`` ends the run with a checkpoint, a resumed run continues its checkpoint."""
    use_device(planned.args.device)
    run = set_up(given, planned, console or Console(soft_wrap=True))
    with open_reporting(run.args, planned.output_dir, run.progress.step, run.progress.resumed_from is not None) as sinks:
        final_loss, stopped_early, stopped_by = _loop(run, sinks, stop_after)
        result = _finish(run, final_loss, stopped_early, stopped_by)
        report_result(sinks, result)
        return result


def use_device(device: str | None) -> str:
    """MLX's device for ``--device``: the Apple GPU (``mps`` or none given, when Metal is there) or the CPU;
    ``mps`` asked for where there is no Metal is refused, as the torch engine refuses it."""
    if device == "mps" and not mx.metal.is_available():
        raise TrainingArgsError("--device mps: MLX has no Metal GPU here; use --device cpu, or leave out --device "
                                "(MLX then runs on the CPU)")
    mx.set_default_device(mx.cpu if device == "cpu" or not mx.metal.is_available() else mx.gpu)
    return device_label()


def device_label() -> str:
    return "the Apple GPU (MLX, Metal)" if mx.default_device() == mx.gpu and mx.metal.is_available() else "the CPU (MLX)"


def set_up(given: TrainingArgs, planned: RunPlan, console: Console) -> MlxRun:
    """Data first (read, checked and scored before anything is loaded or written), then the model, the
    optimizer, a resumed run's state; the plan is printed last."""
    started = time.perf_counter()
    args = replace(planned.args, step_mode="plain", packing=False)  # the plain step, on padded batches
    notes = [*planned.notes, *settings_notes(given, planned)]
    data = read_run_data(planned, notes)
    resolved = resolve_model(args.model)
    check_lora_rank(args, resolved)
    limit_gb = args.max_memory if args.max_memory is not None else default_budget_gb(MLX_DEVICE)
    tokenizer = load_tokenizer(resolved, trust_remote_code=args.trust_remote_code)
    data.tokenize(tokenizer, args.max_seq_length, notes)
    loaded = build_model(args, resolved)
    notes.extend(loaded.notes)
    optimizer = build_optimizer(loaded, args.learning_rate, args.weight_decay)
    checkpointer = MlxCheckpointer(
        planned.output_dir, loaded, optimizer, tokenizer=tokenizer,
        base_model=resolved.reference, keep_last=args.keep_last,
        run_state={"args": asdict(args), "data_sha256": data.digest, "normaliser": data.normaliser,
                   "step_mode": STEP_MODE, "world_size": 1})
    progress = _resume(checkpointer, planned) if planned.checkpoint is not None else Progress()
    prepare_output_dir(planned, notes)
    write_run_file(planned.output_dir, args, world_size=1)
    PEAK.reset()
    model_line = f"{loaded.architecture_name}, {str(loaded.dtype).replace('mlx.core.', '')} on {device_label()}"
    print_plan(console, args, model_line, loaded.trainable_parameter_count(), data, notes, progress.resumed_from,
               limit_gb, STEP_MODE["reason"])
    return MlxRun(args, planned, data, loaded, optimizer, checkpointer, progress, limit_gb, console,
                  tokenizer.pad_token_id, started, notes)


def build_model(args: TrainingArgs, resolved) -> MlxModel:
    """The model in MLX with fresh LoRA adapters (started from ``--seed``), its base in 4 bits with
    ``--quantize 4``, each layer recomputed in the backward pass with ``--grad-checkpoint``."""
    random.seed(args.seed)
    mx.random.seed(args.seed)
    loaded = load_mlx_model(resolved, trust_remote_code=args.trust_remote_code)
    return prepare_for_training(loaded, args.lora_settings(), quantize=args.quantize,
                                grad_checkpoint=args.grad_checkpoint, seed=args.seed)


def build_optimizer(loaded: MlxModel, learning_rate: float, weight_decay: float) -> optim.AdamW:
    """AdamW over the LoRA parameters as the torch engine's (betas 0.9/0.999, eps 1e-8, bias-corrected)."""
    optimizer = optim.AdamW(learning_rate=learning_rate, betas=[0.9, 0.999], eps=1e-8, weight_decay=weight_decay,
                            bias_correction=True)
    optimizer.init(loaded.model.trainable_parameters())
    return optimizer


def _resume(checkpointer: MlxCheckpointer, planned: RunPlan) -> Progress:
    state = checkpointer.resume(planned.checkpoint)
    return Progress(step=state["step"], position=DataPosition(**state["position"]),
                    best_val_loss=state.get("best_val_loss"), tokens_seen=state.get("tokens_seen", 0),
                    elapsed_before=state.get("elapsed_s", 0.0), resumed_from=state["step"])


@dataclass
class MlxStepOutput:
    parts: list[LossParts]
    grad_norm: float


def optimizer_step(loaded: MlxModel, optimizer: optim.Optimizer, batches: list[MlxBatch], learning_rate: float,
                   max_grad_norm: float) -> MlxStepOutput:
    """One optimizer step over ``batches`` (gradient accumulation: the mean of their gradients), clipped to
    ``max_grad_norm``; a gradient that is not finite raises ``ArithmeticError`` before the update."""
    loss_and_grad = nn.value_and_grad(loaded.model, batch_loss)
    gradients, parts = None, []
    for batch in batches:
        (total, cross_entropy), step_gradients = loss_and_grad(loaded.model, batch)
        step_gradients = tree_map(lambda value: value / len(batches), step_gradients)
        gradients = step_gradients if gradients is None else tree_map(mx.add, gradients, step_gradients)
        mx.eval(gradients, total, cross_entropy)
        parts.append(loss_parts(total, cross_entropy, batch))
    clipped, norm = optim.clip_grad_norm(gradients, max_grad_norm)
    grad_norm = float(norm)
    if not math.isfinite(grad_norm):
        raise ArithmeticError(f"the loss or its gradient became {grad_norm}")
    optimizer.learning_rate = learning_rate
    optimizer.update(loaded.model, clipped)
    mx.eval(loaded.model.trainable_parameters(), optimizer.state)
    return MlxStepOutput(parts, grad_norm)


def _loop(run: MlxRun, sinks: Sinks, stop_after: int | None) -> tuple[float | None, bool, str | None]:
    """Train from ``run.progress`` to ``--max-steps`` (or a stop), reporting to ``sinks``; returns (final loss,
    stopped early, signal)."""
    args, progress = run.args, run.progress
    sampler = BatchSampler(len(run.data.train_examples), args.batch_size, args.seed, progress.position)
    reporter = Reporter(run.console, sinks, args, progress.step)
    window, final_loss, stopped_early, stopped_by = MetricsWindow(), None, False, None
    step_end = StepEnd(args, run.save, run.limit_gb, stop_after,
                       last_saved=progress.step if progress.resumed_from is not None else None)
    stop = StopOnSignal()
    stop.install()  # SIGINT / SIGTERM from here on: finish the step, save a checkpoint, stop
    try:
        while progress.step < args.max_steps:
            learning_rate = run.learning_rate()
            batches = [_next_batch(run, sampler) for _ in range(args.grad_accum)]
            output = _step(run, batches, learning_rate)
            progress.step, progress.position = progress.step + 1, sampler.position
            for parts, batch in zip(output.parts, batches):
                window.add(parts, batch.tokens, args.grad_accum)
                progress.tokens_seen += batch.tokens
            step, peak = progress.step, PEAK.peak_gb()
            if step == 1 or due(step, args.memory_report_interval, args.max_steps):
                final_loss = window.loss()
                reporter.train(step, progress.position.epoch, window, learning_rate, output.grad_norm, peak,
                               run.elapsed())
                window = MetricsWindow()
            if run.data.val_examples and due(step, args.eval_every, args.max_steps):
                _validate(run, reporter)
            stopped_by = stop.agreed() if step < args.max_steps else None
            if step_end.stops(step, peak, stopped_by):
                stopped_early = True
                break
    finally:
        stop.restore()
        reporter.close()
    if final_loss is None and window.steps:
        final_loss = window.loss()
    return final_loss, stopped_early, stopped_by


def _next_batch(run: MlxRun, sampler: BatchSampler) -> MlxBatch:
    examples = run.data.train_examples
    return make_batch([examples[index] for index in sampler.next()], run.pad_id, run.data.objective)


def _step(run: MlxRun, batches: list[MlxBatch], learning_rate: float) -> MlxStepOutput:
    try:
        return optimizer_step(run.loaded, run.optimizer, batches, learning_rate, run.args.max_grad_norm)
    except ArithmeticError as error:  # checked before the update: the adapter stays as it was
        raise TrainingError(f"{error} at step {run.progress.step + 1}; lower --learning-rate (now "
                            f"{run.args.learning_rate:g}) or --max-grad-norm") from None


def _validate(run: MlxRun, reporter: Reporter) -> None:
    """The objective over the validation set; a new best is reported and, with --save-best, saved."""
    args, progress = run.args, run.progress
    values = evaluate(run.loaded.model, run.data.val_examples, run.data.objective, args.batch_size, run.pad_id)
    improved = progress.best_val_loss is None or values["val_loss"] < progress.best_val_loss
    if improved:
        progress.best_val_loss = values["val_loss"]
    reporter.eval(progress.step, values, improved and args.save_best)
    if improved and args.save_best:
        run.checkpointer.save_best(progress.step, values)


def _finish(run: MlxRun, final_loss: float | None, stopped_early: bool, stopped_by: str | None) -> TrainResult:
    """The final adapter and the summary (a run that stopped early has its checkpoint instead)."""
    args, output_dir = run.args, run.planned.output_dir
    if not stopped_early:
        run.checkpointer.save_final()
    result = TrainResult(
        output_dir=output_dir, steps=run.progress.step, final_loss=final_loss,
        best_val_loss=run.progress.best_val_loss, peak_memory_gb=PEAK.peak_gb(),
        elapsed_s=time.perf_counter() - run.started, resumed_from=run.progress.resumed_from,
        stopped_early=stopped_early, normaliser=run.data.normaliser, notes=run.notes, step_mode=STEP_MODE,
        max_steps=args.max_steps, stopped_by=stopped_by,
        resume_command=resume_command(args) if stopped_early else None,
    )
    if not stopped_early:
        run.checkpointer.save_summary({**asdict(result), "output_dir": str(output_dir), "args": asdict(args),
                                       "base_model": run.checkpointer.base_model, "engine": "mlx"})
    return result


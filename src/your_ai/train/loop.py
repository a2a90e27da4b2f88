"""The training loop: ``train`` plans the run, sets it up from small parts and runs ``_loop``, which reads
top to bottom: draw the micro-batches, take the optimizer step (``your_ai.train.step``), report,
validate, check the memory limit, checkpoint, stop on a signal.
"""

from __future__ import annotations

import gc
import io
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console
from transformers import get_cosine_schedule_with_warmup

from your_ai.data.examples import BatchSampler, collate
from your_ai.data.packing import (
    PackedBatchSampler,
    collate_packed,
    estimate_packing,
    record_lengths,
)
from your_ai.files import interrupted_by_signals
from your_ai.hardware import pick_device
from your_ai.model.load import load_tokenizer
from your_ai.model.resolve import resolve_model
from your_ai.step.memory import PeakMemory, default_budget_gb, use_expandable_segments
from your_ai.step.modes import runs_plain
from your_ai.train import defaults as run_defaults
from your_ai.train.args import (
    TrainingArgs,
    TrainingError,
    check_lora_rank,
    check_mlx_processes,
    default_choice,
    resume_command,
)
from your_ai.train.checkpointer import Checkpointer, Progress
from your_ai.train.loss import StepLoss, evaluate, global_loss_parts
from your_ai.train.parallel import Strategy, World, start, world_from_env
from your_ai.train.plan import RunData, RunPlan, plan_run, read_run_data
from your_ai.train.report import (
    MetricsWindow,
    QuietReporter,
    Reporter,
    open_reporting,
    print_plan,
    report_result,
)
from your_ai.train.run import (
    StepEnd,
    StopOnSignal,
    TrainResult,
    due,
    finished_result,
    settings_notes,
)
from your_ai.train.setup import (
    PreparedStep,
    TrainingModel,
    apply_step_mode,
    attention_for,
    build_optimizer,
    load_for_training,
    sharding_saves,
)
from your_ai.train.sinks import Sinks
from your_ai.train.step import MicroBatch, NonFiniteGradient, StepOutput, optimizer_step


def train(args: TrainingArgs, *, stop_after: int | None = None, console=None) -> TrainResult:
    """Fine-tune with LoRA under the distrust objective; returns where the adapter is.

    Nothing is loaded or written until the data has been read, checked and scored.
    ``stop_after`` ends the run (with a checkpoint) after that many steps, as an interruption
    would, without changing the schedule; ``resume`` continues from the newest checkpoint.

    Started by torchrun (``WORLD_SIZE`` > 1 in the environment), every process runs this loop
    data-parallel (``your_ai.train.parallel``): each trains on its slice of global batches of
    ``batch_size`` x world size samples, and rank 0 alone prints and writes.

    With ``engine`` "mlx" (``--engine``, or a resumed run's checkpoint) the planned run is trained in MLX
    (``your_ai.mlx_engine.loop.train``).
    """
    planned = plan_run(args)  # first: a resumed run trains on the device its checkpoint names (--device)
    if planned.finished:
        return finished_result(planned)
    if planned.args.engine == "mlx":
        from your_ai.mlx_engine.loop import (
            train as train_in_mlx,  # imports MLX: only when it was chosen
        )

        world = world_from_env()
        check_mlx_processes(world.size, f"WORLD_SIZE={world.size}")

        return train_in_mlx(args, planned, stop_after=stop_after, console=console)
    world, device = start(pick_device(planned.args.device))
    use_expandable_segments(device)
    run = None
    try:
        with interrupted_by_signals():  # SIGTERM as well as Ctrl-C stops the set-up (a cache build) cleanly
            run = _set_up(args, planned, world, device, console)
        with open_reporting(run.args, run.planned.output_dir, run.progress.step, run.progress.resumed_from is not None,
                            writer=run.strategy.is_writer) as sinks:
            final_loss, stopped_early, stopped_by = _loop(run, sinks, stop_after)
            result = _finish(run, final_loss, stopped_early, stopped_by)
            report_result(sinks, result)
            return result
    finally:
        # The model, its sharded state and any collective it still holds go before the process group does,
        # not during the interpreter's exit (where freeing them aborts the process).
        del run
        gc.collect()
        Strategy(world, device).stop()


@dataclass
class _Run:
    """A run set up to train: its settings and data, the model and its step, the strategy, the writer."""

    args: TrainingArgs
    planned: RunPlan
    data: RunData
    strategy: Strategy
    loaded: TrainingModel
    prepared: PreparedStep
    step_loss: torch.nn.Module  # the step's loss module, wrapped by the strategy
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    checkpointer: Checkpointer
    progress: Progress
    peak: PeakMemory
    limit_gb: float
    console: Console
    pad_id: int
    started: float
    notes: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return self.progress.elapsed(self.started)

    def save(self) -> Path:
        return self.checkpointer.save(self.progress, self.elapsed())


def _set_up(given: TrainingArgs, planned: RunPlan, world: World, device: str, console) -> _Run:
    """Data first (read, checked and scored before anything is loaded or written), then the strategy, the
    model and its step, the optimizer and schedule, a resumed run's state; the plan is printed last."""
    started = time.perf_counter()
    console = (console or Console(soft_wrap=True)) if world.main else Console(file=io.StringIO())  # rank 0 reports
    args, notes = planned.args, [*planned.notes, *settings_notes(given, planned)]
    with Strategy(world, device).local_main_first():  # the others find the scores it computed in the cache
        data = read_run_data(planned, notes)
    _check_processes_agree(data, Strategy(world, device), args)
    resolved = resolve_model(args.model)
    check_lora_rank(args, resolved)
    limit_gb = args.max_memory if args.max_memory is not None else default_budget_gb(device)
    saves = sharding_saves(args, world, device, limit_gb, resolved, notes)
    strategy = Strategy(world, device, sharded=saves is not None)
    notes.extend(_strategy_notes(strategy, args, planned.state))
    tokenizer = load_tokenizer(resolved, trust_remote_code=args.trust_remote_code)
    with strategy.local_main_first():  # the others open the tokenized cache it built
        data.tokenize(tokenizer, args.max_seq_length, notes)
    args = _with_packing(given, args, data, world, planned.checkpoint is not None, notes)
    step_budget_gb = limit_gb + (saves or 0.0)  # the step mode's estimate holds the whole model
    loaded, prepared, step_loss = _build_model(given, planned, strategy, data, step_budget_gb, notes)
    args = replace(args, step_mode=prepared.mode.name)  # saved with each checkpoint: a resumed run keeps its mode
    optimizer = build_optimizer(loaded.model, args.learning_rate, args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    checkpointer = Checkpointer(
        planned.output_dir, strategy, model=loaded.model, optimizer=optimizer, scheduler=scheduler,
        tokenizer=loaded.tokenizer, base_model=resolved.reference,
        keep_last=args.keep_last, run_state={"args": asdict(args), "data_sha256": data.digest,
                                             "normaliser": data.normaliser, "step_mode": prepared.mode.to_dict(),
                                             "world_size": world.size})
    progress = checkpointer.resume(planned.checkpoint) if planned.checkpoint is not None else Progress()
    checkpointer.prepare(planned, notes)
    checkpointer.save_run_file(args)
    peak = PeakMemory(device)
    peak.reset()
    model_line = f"{loaded.architecture_name}, {str(loaded.dtype).replace('torch.', '')} on {device}"
    trainable = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    print_plan(console, args, model_line, trainable, data, notes, progress.resumed_from, limit_gb,
               prepared.mode.reason)
    return _Run(args, planned, data, strategy, loaded, prepared, strategy.wrap(step_loss), optimizer, scheduler,
                checkpointer, progress, peak, limit_gb, console, tokenizer.pad_token_id,
                started, notes)


def _build_model(given: TrainingArgs, planned: RunPlan, strategy: Strategy, data: RunData, step_budget_gb: float,
                 notes: list[str]) -> tuple[TrainingModel, PreparedStep, StepLoss]:
    """The model with fresh LoRA adapters, loaded as the strategy holds it, with the step mode applied."""
    args = planned.args
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    loaded = load_for_training(
        args.model, args.lora_settings(), strategy.device,
        grad_checkpoint=args.grad_checkpoint and runs_plain(args.step_mode, args.dora), trust_remote_code=args.trust_remote_code,
        quantize=args.quantize, seed=args.seed,
        on_meta=strategy.sharded and not args.quantize,  # 4-bit weights are built whole on each rank, then sharded
        attn_implementation=attention_for(args.attn_implementation, strategy.device),
    )
    notes.extend(loaded.notes)
    step_loss = StepLoss(loaded.model, data.objective, False)  # the head is the step mode's, set below
    read = strategy.load(step_loss, loaded.resolved.path, args.seed)
    if read:
        notes.append(f"each process read only its shards of the {read} base weight tensors")
    mode_given = given.step_mode is not None or given.grad_checkpoint
    prepared = apply_step_mode(
        loaded.model, args.step_mode, args.lora_settings(), args.batch_size, args.max_seq_length, strategy.device,
        step_budget_gb, grad_checkpoint=args.grad_checkpoint, quantize=args.quantize,
        kept=(planned.state or {}).get("step_mode") if not mode_given else None,
    )
    step_loss.fast_head, step_loss.chunk_tokens = prepared.fast_head, prepared.chunk_tokens
    notes.extend(prepared.notes)
    loaded.model.train()
    return loaded, prepared, step_loss


def _with_packing(given: TrainingArgs, args: TrainingArgs, data: RunData, world: World, resumed: bool,
                  notes: list[str]) -> TrainingArgs:
    """``args`` with ``packing`` decided: as given (``--packing``, ``--no-packing``, a resumed run's), else on
    when unpacked batches would hold enough padding and the model's attention is transformers' own; the run
    says which and why. A new packed run whose steps were defaulted takes its epochs over the packed rows."""
    lengths = record_lengths(data.train_examples)
    estimate = estimate_packing(lengths, args.batch_size * world.size, args.max_seq_length, args.seed)
    if args.packing is not None:
        on, why = args.packing, "as the run started" if resumed else "as asked"
    elif args.trust_remote_code:
        on, why = False, "the model's own code may not mask attention per record; --packing turns it on"
    else:
        on, why = estimate.pays, "it pays" if estimate.pays else "it would not pay"
    notes.append(estimate.describe(on, why))
    if not on or resumed or given.max_steps is not None:
        return replace(args, packing=on)
    epochs = default_choice(given).rule.epochs
    per_step = args.batch_size * args.grad_accum
    steps = run_defaults.steps_for(epochs, estimate.rows, per_step)
    warmup = run_defaults.warmup_for(steps) if given.warmup_steps is None else args.warmup_steps
    notes.append(f"packed: --max-steps {steps} ({epochs:g} epoch(s) over the {estimate.rows} packed rows at "
                 f"{per_step} per step, at least {run_defaults.MIN_STEPS})"
                 + (f", --warmup-steps {warmup}" if given.warmup_steps is None else ""))
    return replace(args, packing=True, max_steps=steps, warmup_steps=warmup)


def _check_processes_agree(data: RunData, strategy: Strategy, args: TrainingArgs) -> None:
    differing = strategy.check_same({"data_sha256": data.digest, "normaliser": data.normaliser})
    if differing is not None:
        raise TrainingError(
            f"rank {differing['rank']} read different training data than rank {strategy.world.rank} from {args.data} "
            f"(sha256 {differing['data_sha256'][:12]} vs {data.digest[:12]}); every process needs the same data"
        )


def _strategy_notes(strategy: Strategy, args: TrainingArgs, saved_state: dict | None) -> list[str]:
    """How the processes share the run, and a resumed run's change in their number."""
    world, notes = strategy.world, []
    if world.distributed:
        how = "FSDP, parameters sharded" if strategy.sharded else "DistributedDataParallel"
        notes.append(f"data-parallel over {world.size} processes ({world.backend}, {how}): global batch "
                     f"{args.batch_size * world.size} = --batch-size {args.batch_size} x {world.size}")
    saved_world = (saved_state or {}).get("world_size", 1)
    if saved_state is not None and saved_world != world.size:
        notes.append(f"the checkpoint was saved by {saved_world} process(es); the run goes on with {world.size} "
                     f"from the same sample (global batch now {args.batch_size * world.size})")
    return notes


def _loop(run: _Run, sinks: Sinks, stop_after: int | None) -> tuple[float | None, bool, str | None]:
    """Train from ``run.progress`` to ``--max-steps`` (or a stop), reporting to ``sinks``; returns (final loss,
    stopped early, signal)."""
    args, strategy, progress = run.args, run.strategy, run.progress
    sampler = _sampler(run)
    reporter = Reporter(run.console, sinks, args, progress.step) if strategy.is_writer else QuietReporter()
    window, final_loss, stopped_early, stopped_by = MetricsWindow(), None, False, None
    step_end = StepEnd(args, run.save, run.limit_gb, stop_after,
                       last_saved=progress.step if progress.resumed_from is not None else None)
    stop = StopOnSignal(quiet=not strategy.is_writer)
    stop.install()  # SIGINT / SIGTERM from here on: finish the step, save a checkpoint, stop
    try:
        while progress.step < args.max_steps:
            learning_rate = run.scheduler.get_last_lr()[0]
            micro_batches, counts = _draw_micro_batches(run, sampler)
            output = _step(run, micro_batches)
            progress.step, progress.position = progress.step + 1, sampler.position
            progress.tokens_seen += _add_to_window(run, window, output, micro_batches, counts)
            step = progress.step
            run.peak.sample()
            peak_gb = strategy.all_max(run.peak.peak_gb())  # every process stops at the same step
            if step == 1 or due(step, args.memory_report_interval, args.max_steps):
                final_loss = window.loss()
                reporter.train(step, progress.position.epoch, window, learning_rate, output.grad_norm, peak_gb,
                               run.elapsed())
                window = MetricsWindow()
            if strategy.evaluates and run.data.val_examples and due(step, args.eval_every, args.max_steps):
                _validate(run, reporter)
            stopped_by = stop.agreed(strategy.all_max) if step < args.max_steps else None
            if step_end.stops(step, peak_gb, stopped_by):
                stopped_early = True
                break
    finally:
        stop.restore()
        reporter.close()
    if final_loss is None and window.steps:
        final_loss = window.loss()
    return final_loss, stopped_early, stopped_by


def _sampler(run: _Run) -> BatchSampler | PackedBatchSampler:
    """The shared order of batches (the same for every process and any number of them): records, or packed
    rows of records with ``--packing``, ``--batch-size`` per process."""
    args, examples, position = run.args, run.data.train_examples, run.progress.position
    size = args.batch_size * run.strategy.world.size
    if args.packing:
        return PackedBatchSampler(record_lengths(examples), size, args.max_seq_length, args.seed,
                                  position)
    return BatchSampler(len(examples), size, args.seed, position)


def _draw_micro_batches(run: _Run, sampler) -> tuple[list[MicroBatch], list[int]]:
    """The step's micro-batches on this process's device, and how many samples (records) of each are this
    process's. Each process's loss is scaled by its share of the global batch's records.

    A process left without samples (a short last batch) takes part with its first row or sample at zero weight."""
    args, strategy, examples = run.args, run.strategy, run.data.train_examples
    micro_batches, counts = [], []
    for _ in range(args.grad_accum):
        shared = sampler.next()
        mine = strategy.rank_slice(shared, args.batch_size)
        if args.packing:
            batch = collate_packed([[examples[i] for i in row] for row in (mine or shared[:1])], run.pad_id)
            records, total = sum(map(len, mine)), sum(map(len, shared))
        else:
            batch = collate([examples[i] for i in (mine or shared[:1])], run.pad_id)
            records, total = len(mine), len(shared)
        batch = {key: value.to(strategy.device) for key, value in batch.items()}
        micro_batches.append(MicroBatch(batch, strategy.loss_scale(records, total)))
        counts.append(records)
    return micro_batches, counts


def _step(run: _Run, micro_batches: list[MicroBatch]) -> StepOutput:
    try:
        return optimizer_step(run.step_loss, micro_batches, run.optimizer, run.scheduler, run.args.max_grad_norm)
    except NonFiniteGradient as error:  # checked before the update: the adapter stays as it was
        raise TrainingError(f"{error} at step {run.progress.step + 1}; lower --learning-rate (now "
                            f"{run.args.learning_rate:g}) or --max-grad-norm") from None


def _add_to_window(run: _Run, window: MetricsWindow, output: StepOutput, micro_batches: list[MicroBatch],
                   counts: list[int]) -> int:
    """Add the step's loss parts over the whole global batch to ``window``; returns its tokens."""
    tokens_seen = 0
    for parts, micro, count in zip(output.parts, micro_batches, counts):
        tokens = int(micro.batch["attention_mask"].sum()) if count else 0
        parts, tokens = global_loss_parts(parts, count, tokens, run.data.objective, run.strategy)
        window.add(parts, tokens, run.args.grad_accum)
        tokens_seen += tokens
    return tokens_seen


def _validate(run: _Run, reporter) -> None:
    """The objective over the validation set; a new best is reported and, with --save-best, saved."""
    args, progress, step = run.args, run.progress, run.progress.step
    with run.strategy.gathered(run.step_loss):
        values = evaluate(run.loaded.model, run.data.val_examples, run.data.objective, args.batch_size, run.pad_id,
                          run.strategy.device, fast_head=run.prepared.fast_head,
                          chunk_tokens=run.prepared.chunk_tokens)
    improved = progress.best_val_loss is None or values["val_loss"] < progress.best_val_loss
    if improved:
        progress.best_val_loss = values["val_loss"]
    reporter.eval(step, values, improved and args.save_best)
    if improved and args.save_best:
        run.checkpointer.save_best(step, values)


def _finish(run: _Run, final_loss: float | None, stopped_early: bool, stopped_by: str | None) -> TrainResult:
    """The final adapter and the summary (a run that stopped early has its checkpoint instead)."""
    args, strategy = run.args, run.strategy
    if not stopped_early:
        run.checkpointer.save_final()
    strategy.barrier()
    output_dir = run.planned.output_dir
    result = TrainResult(
        output_dir=output_dir, steps=run.progress.step, final_loss=final_loss,
        best_val_loss=run.progress.best_val_loss, peak_memory_gb=run.peak.peak_gb(),
        elapsed_s=time.perf_counter() - run.started, resumed_from=run.progress.resumed_from,
        stopped_early=stopped_early, normaliser=run.data.normaliser, notes=run.notes,
        step_mode=run.prepared.mode.to_dict(), world_size=strategy.world.size, rank=strategy.world.rank,
        max_steps=args.max_steps, stopped_by=stopped_by,
        resume_command=resume_command(args, strategy.world.size) if stopped_early else None,
    )
    if not stopped_early:
        run.checkpointer.save_summary({**asdict(result), "output_dir": str(output_dir), "args": asdict(args),
                                       "base_model": run.checkpointer.base_model})
    return result

"""The run's writer of checkpoints and adapters: ``Checkpointer`` owns every write into the output
directory during a run (the run file, checkpoints that resume exactly, keep-last, best/, the final adapter,
the summary) and resuming from a checkpoint. The file formats are ``your_ai.train.checkpoints``'.

Under a sharded strategy every process takes part in gathering the full states; the writer alone writes.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

from your_ai.data.examples import DataPosition
from your_ai.files import write_json_atomic
from your_ai.train.checkpoints import (
    load_adapter_weights,
    load_training_state,
    save_adapter,
    save_best,
    save_checkpoint,
)
from your_ai.train.outputs import SUMMARY_FILE, checkpoints_dir, step_dir_name
from your_ai.train.parallel import Strategy
from your_ai.train.plan import RunPlan, prepare_output_dir
from your_ai.train.run import Progress
from your_ai.train.run_file import write_run_file


class Checkpointer:
    """Saves and resumes one run in ``output_dir``. ``run_state``: the trainer-state entries fixed for the
    run (settings, data digest, normaliser, step mode, processes), saved with every checkpoint."""

    def __init__(self, output_dir: Path, strategy: Strategy, *, model, optimizer, scheduler, tokenizer,
                 base_model: str, keep_last: int, run_state: dict):
        self.output_dir, self.strategy = Path(output_dir), strategy
        self.model, self.optimizer, self.scheduler, self.tokenizer = model, optimizer, scheduler, tokenizer
        self.base_model, self.keep_last, self.run_state = base_model, keep_last, run_state

    def prepare(self, planned: RunPlan, notes: list[str]) -> None:
        """Before the first write: ``--overwrite`` removes the earlier run's files; a resumed run sets its
        damaged checkpoints aside (renamed, not deleted); unfinished temporary writes are removed."""
        if self.strategy.is_writer:
            prepare_output_dir(planned, notes)

    def save_run_file(self, args) -> None:
        """The run's settings as the run uses them (``args``), as a run file beside the adapter."""
        if self.strategy.is_writer:
            write_run_file(self.output_dir, args, self.strategy.world.size)

    def resume(self, checkpoint: Path) -> Progress:
        """The adapter, optimizer, schedule and random states of ``checkpoint``; returns its progress."""
        load_adapter_weights(self.model, checkpoint)
        state = load_training_state(checkpoint, optimizer=self.optimizer, scheduler=self.scheduler,
                                    set_optimizer_state=self.strategy.optimizer_state_loader(self.model,
                                                                                             self.optimizer))
        return Progress(step=state["step"], position=DataPosition(**state["position"]),
                        best_val_loss=state.get("best_val_loss"), tokens_seen=state.get("tokens_seen", 0),
                        elapsed_before=state.get("elapsed_s", 0.0), resumed_from=state["step"])

    def save(self, progress: Progress, elapsed_s: float) -> Path:
        """A checkpoint at ``progress.step`` (every process calls it); returns its directory."""
        fixed = self.run_state
        trainer_state = {
            "args": fixed["args"], "position": asdict(progress.position),
            "data_sha256": fixed["data_sha256"], "best_val_loss": progress.best_val_loss,
            "normaliser": fixed["normaliser"], "tokens_seen": progress.tokens_seen, "elapsed_s": elapsed_s,
            "step_mode": fixed["step_mode"], "world_size": fixed["world_size"],
        }
        self._write(lambda model_state, optimizer_state: save_checkpoint(
            self.output_dir, progress.step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            trainer_state=trainer_state, base_model=self.base_model, keep_last=self.keep_last,
            model_state=model_state, optimizer_state=optimizer_state), optimizer=self.optimizer)
        self.strategy.barrier()
        return checkpoints_dir(self.output_dir) / step_dir_name(progress.step)

    def save_best(self, step: int, values: dict) -> None:
        """The adapter into best/, with the step and its validation values (every evaluating process calls it)."""
        self._write(lambda model_state, _: save_best(self.output_dir, model=self.model, tokenizer=self.tokenizer,
                                                     base_model=self.base_model, info={"step": step, **values},
                                                     state_dict=model_state))

    def save_final(self) -> None:
        """The final adapter and the tokenizer into the output directory itself (every process calls it)."""
        self._write(lambda model_state, _: save_adapter(self.model, self.output_dir, base_model=self.base_model,
                                                        tokenizer=self.tokenizer, state_dict=model_state))

    def save_summary(self, summary: dict) -> None:
        if self.strategy.is_writer:
            write_json_atomic(self.output_dir / SUMMARY_FILE, summary)

    def _write(self, write: Callable[[dict | None, dict | None], None], optimizer=None) -> None:
        """Gather the full states if the strategy shards them, then write if this process is the writer."""
        model_state, optimizer_state = self.strategy.full_states(self.model, optimizer)
        if self.strategy.is_writer:
            write(model_state, optimizer_state)

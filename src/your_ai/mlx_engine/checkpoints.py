"""Checkpoints of the MLX engine, in the torch engine's layout (``your_ai.train.outputs``), written as it
writes them (atomically, ``latest`` updated last, keep-last, best/): the adapter in PEFT's format, the
optimizer's state (``optimizer.safetensors``: AdamW's moments and step under the adapter's parameter paths;
``optimizer.json``: its settings), the random states (``rng.safetensors``: MLX's key, kept for the record:
MLX cannot set it back, and the step draws no random numbers; Python's, in ``trainer_state.json``,
restored) and the trainer state. A checkpoint resumes exactly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from your_ai.files import write_json_atomic, write_text_atomic
from your_ai.mlx_engine.adapters import load_adapter_weights, write_adapter
from your_ai.mlx_engine.model import MlxModel
from your_ai.train.checkpoints import (
    prune_checkpoints,
    replace_files,
    write_directory_atomically,
)
from your_ai.train.outputs import (
    BEST_DIR,
    LATEST_FILE,
    SUMMARY_FILE,
    TRAINER_STATE_FILE,
    CheckpointError,
    checkpoints_dir,
    read_trainer_state,
    step_dir_name,
)

ENGINE = "mlx"


class MlxCheckpointer:
    """Every write of an MLX run into ``output_dir``, and resuming. ``run_state``: the trainer-state entries
    fixed for the run (settings, data digest, normaliser, step mode), saved with every checkpoint."""

    def __init__(self, output_dir: Path, loaded: MlxModel, optimizer, *, tokenizer, base_model: str,
                 keep_last: int, run_state: dict):
        self.output_dir, self.loaded, self.optimizer, self.tokenizer = Path(output_dir), loaded, optimizer, tokenizer
        self.base_model, self.keep_last, self.run_state = base_model, keep_last, run_state

    def save(self, step: int, progress_state: dict) -> Path:
        """``checkpoints/step-NNNNNN`` (``progress_state``: position, tokens, best loss, time), ``latest``, keep-last."""
        target = checkpoints_dir(self.output_dir) / step_dir_name(step)
        version, internal, gauss = random.getstate()
        state = {**self.run_state, **progress_state, "step": step, "engine": ENGINE,
                 "scheduler": {"last_epoch": step}, "rng": {"python": [version, list(internal), gauss]}}

        def fill(directory: Path) -> None:
            write_adapter(self.loaded, directory, base_model=self.base_model)
            mx.save_safetensors(str(directory / "optimizer.safetensors"), dict(tree_flatten(self.optimizer.state)),
                                metadata={"format": ENGINE})
            (directory / "optimizer.json").write_text(json.dumps(optimizer_settings(self.optimizer), indent=2) + "\n")
            mx.save_safetensors(str(directory / "rng.safetensors"), {"mlx_key": mx.random.state[0]},
                                metadata={"format": ENGINE})
            (directory / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

        write_directory_atomically(target, fill)
        write_text_atomic(checkpoints_dir(self.output_dir) / LATEST_FILE, target.name + "\n")
        prune_checkpoints(self.output_dir, self.keep_last)
        return target

    def resume(self, checkpoint: Path) -> dict:
        """The adapter, optimizer and random states of ``checkpoint``; returns its trainer state."""
        checkpoint = Path(checkpoint)
        state = read_trainer_state(checkpoint)
        if state.get("engine", "torch") != ENGINE:
            raise CheckpointError(f"{checkpoint} was written by the {state.get('engine', 'torch')} engine; "
                                  f"resume it with --engine {state.get('engine', 'torch')}")
        load_adapter_weights(self.loaded, checkpoint)
        try:
            saved = mx.load(str(checkpoint / "optimizer.safetensors"))
            self.optimizer.state = tree_unflatten(list(saved.items()))
            version, internal, gauss = state["rng"]["python"]
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint {checkpoint} is incomplete or damaged: {error}") from None
        random.setstate((version, tuple(internal), gauss))
        mx.eval(self.optimizer.state)
        return state

    def save_best(self, step: int, values: dict) -> None:
        def fill(directory: Path) -> None:
            write_adapter(self.loaded, directory, base_model=self.base_model, tokenizer=self.tokenizer)
            (directory / "best.json").write_text(json.dumps({"step": step, **values}, indent=2) + "\n")

        write_directory_atomically(self.output_dir / BEST_DIR, fill)

    def save_final(self) -> None:
        """The final adapter and the tokenizer into the output directory itself (files replaced whole)."""
        replace_files(self.output_dir, lambda directory: write_adapter(self.loaded, directory, base_model=self.base_model,
                                                                      tokenizer=self.tokenizer))

    def save_summary(self, summary: dict) -> None:
        write_json_atomic(self.output_dir / SUMMARY_FILE, summary)


def optimizer_settings(optimizer) -> dict:
    """The optimizer's settings, for ``optimizer.json``."""
    return {"engine": ENGINE, "optimizer": type(optimizer).__name__, "betas": list(optimizer.betas),
            "eps": optimizer.eps, "weight_decay": optimizer.weight_decay, "bias_correction": optimizer.bias_correction}

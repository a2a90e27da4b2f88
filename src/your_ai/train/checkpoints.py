"""Checkpoints: the final adapter, intermediate checkpoints that resume exactly, keep-last, best.

The output directory's layout is in ``your_ai.train.outputs``.

Every tensor is written with safetensors and everything else as JSON; nothing is pickled.
A checkpoint is written into a hidden temporary directory, fsynced, then renamed into place,
so a killed write leaves only a ``.tmp-*`` directory that resume ignores. ``--resume`` takes the
newest checkpoint that loads; a damaged one is set aside (renamed), never deleted, and pruning
never removes the newest checkpoint that loads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from your_ai.files import fsync_dir, give_default_permissions, write_text_atomic
from your_ai.train.outputs import (
    ADAPTER_WEIGHTS_FILE,
    BEST_DIR,
    LATEST_FILE,
    TEMP_PREFIX,
    TRAINER_STATE_FILE,
    CheckpointError,
    checkpoints_dir,
    list_checkpoints,
    read_trainer_state,
    step_dir_name,
    verify_checkpoint,
)

# ---------------------------------------------------------------------------- atomic writes

def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(path)
    fsync_dir(root)


def write_directory_atomically(target: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling of ``target``, fsync it, and rename it to ``target``.

    An existing ``target`` is replaced (moved aside first, removed after the rename).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}-", dir=target.parent))
    try:
        fill(staging)
        give_default_permissions(staging)  # the user's umask, not tempfile's (and safetensors') owner-only modes
        _fsync_tree(staging)
        old = None
        if target.exists():
            old = target.with_name(f"{TEMP_PREFIX}old-{target.name}-{os.getpid()}")
            os.rename(target, old)
        os.rename(staging, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------------- adapter

def write_adapter(model, directory: Path, *, base_model: str, tokenizer=None, state_dict: dict | None = None) -> None:
    """PEFT adapter (config + safetensors weights) into ``directory`` (which must exist),
    with ``base_model_name_or_path`` set to ``base_model`` and the tokenizer beside it.

    ``state_dict``: the model's full (unsharded) state dict to take the adapter from, for a model
    whose parameters are sharded over processes; ``None``: the model's own parameters."""
    for config in model.peft_config.values():
        config.base_model_name_or_path = base_model
    extra = {} if state_dict is None else {"state_dict": state_dict}
    # LoRA never trains the embeddings; saying so also keeps PEFT from looking the base up online.
    model.save_pretrained(directory, safe_serialization=True, save_embedding_layers=False, **extra)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_adapter(model, output_dir: Path, *, base_model: str, tokenizer=None, state_dict: dict | None = None) -> Path:
    """The final adapter into ``output_dir`` itself (``replace_files``: files from an earlier run are
    replaced, not mixed)."""
    return replace_files(output_dir, lambda staging: write_adapter(model, staging, base_model=base_model,
                                                                   tokenizer=tokenizer, state_dict=state_dict))


def replace_files(output_dir: Path, fill: Callable[[Path], None]) -> Path:
    """Files written by ``fill`` into a temporary directory, then each moved into ``output_dir`` with
    ``os.replace``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}adapter-", dir=output_dir))
    try:
        fill(staging)
        give_default_permissions(staging)
        _fsync_tree(staging)
        for path in sorted(staging.iterdir()):
            if path.is_file():
                os.replace(path, output_dir / path.name)
        fsync_dir(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def load_adapter_weights(model, directory: Path) -> None:
    """Load an adapter's weights (safetensors) into an already LoRA-wrapped ``model``."""
    from peft import set_peft_model_state_dict

    weights = Path(directory) / ADAPTER_WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist")
    device = next(model.parameters()).device
    result = set_peft_model_state_dict(model, load_file(weights, device=str(device)))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise CheckpointError(f"{weights} does not match the model's adapters (unexpected: {unexpected[:3]})")


# ---------------------------------------------------------------------------- optimizer and RNG

def optimizer_state_to_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and the JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for parameter_id, values in state_dict["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{parameter_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(parameter_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": scalars}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, parameter_id, key = name.split(".", 2)
        state.setdefault(int(parameter_id), {})[key] = tensor
    for parameter_id, values in meta.get("state", {}).items():
        state.setdefault(int(parameter_id), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every random state a training step can touch: torch CPU/CUDA/MPS (tensors), Python's (JSON)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = state
    if torch.backends.mps.is_available():
        tensors["torch_mps"] = torch.mps.get_rng_state()
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[f"torch_cuda_{i}"] for i in range(torch.cuda.device_count()) if f"torch_cuda_{i}" in tensors]
        if states:
            torch.cuda.set_rng_state_all(states)
    if "torch_mps" in tensors and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["torch_mps"])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------- checkpoints

def save_checkpoint(
    output_dir: Path,
    step: int,
    *,
    model,
    optimizer,
    scheduler,
    trainer_state: dict,
    base_model: str,
    keep_last: int,
    model_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write ``checkpoints/step-NNNNNN`` atomically, point ``latest`` at it, drop all but the newest ``keep_last``.

    ``model_state`` / ``optimizer_state``: full (unsharded) state dicts gathered from a model sharded
    over processes (the optimizer's with parameter numbers, as ``optimizer.state_dict()`` has them);
    ``None``: taken from ``model`` and ``optimizer`` themselves."""
    target = checkpoints_dir(output_dir) / step_dir_name(step)

    def fill(directory: Path) -> None:
        write_adapter(model, directory, base_model=base_model, state_dict=model_state)
        tensors, meta = optimizer_state_to_files(optimizer.state_dict() if optimizer_state is None else optimizer_state)
        save_file(tensors, directory / "optimizer.safetensors")
        (directory / "optimizer.json").write_text(json.dumps(meta, indent=2) + "\n")
        rng_tensors, rng_meta = rng_state()
        save_file(rng_tensors, directory / "rng.safetensors")
        state = dict(trainer_state, step=step, scheduler=scheduler.state_dict(), rng=rng_meta)
        (directory / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    write_directory_atomically(target, fill)
    write_text_atomic(checkpoints_dir(output_dir) / LATEST_FILE, target.name + "\n")
    prune_checkpoints(output_dir, keep_last)
    return target


def prune_checkpoints(output_dir: Path, keep_last: int) -> list[Path]:
    """Remove all but the newest ``keep_last`` complete checkpoints; returns what was removed. The
    newest checkpoint that loads is always kept, even when newer ones are damaged."""
    found = list_checkpoints(output_dir)
    removed = [path for _, path in found[:-keep_last]] if keep_last > 0 else []
    for _, path in reversed(found):
        try:
            verify_checkpoint(path)
        except CheckpointError:
            continue
        removed = [other for other in removed if other != path]
        break
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def load_training_state(checkpoint: Path, *, optimizer, scheduler,
                        set_optimizer_state: Callable[[dict], None] | None = None) -> dict:
    """Restore optimizer, scheduler and RNG from ``checkpoint`` (not the adapter); return its trainer state.

    ``set_optimizer_state``: applies the full optimizer state dict (parameter numbers as keys) to an
    optimizer over sharded parameters; ``None``: ``optimizer.load_state_dict``."""
    checkpoint = Path(checkpoint)
    state = read_trainer_state(checkpoint)
    try:
        meta = json.loads((checkpoint / "optimizer.json").read_text())
        tensors = load_file(checkpoint / "optimizer.safetensors")
        (set_optimizer_state or optimizer.load_state_dict)(optimizer_state_from_files(tensors, meta))
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(load_file(checkpoint / "rng.safetensors"), state["rng"])
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {checkpoint} is incomplete or damaged: {error}") from None
    return state


def save_best(output_dir: Path, *, model, tokenizer, base_model: str, info: dict,
              state_dict: dict | None = None) -> Path:
    """Replace ``best/`` with the current adapter (and tokenizer) and ``info`` (step, validation loss);
    ``state_dict`` as in ``write_adapter``."""

    def fill(directory: Path) -> None:
        write_adapter(model, directory, base_model=base_model, tokenizer=tokenizer, state_dict=state_dict)
        (directory / "best.json").write_text(json.dumps(info, indent=2) + "\n")

    return write_directory_atomically(Path(output_dir) / BEST_DIR, fill)

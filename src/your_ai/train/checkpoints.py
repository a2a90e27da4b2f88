"""Checkpoints: the final adapter, intermediate checkpoints that resume exactly, keep-last, best.

Layout of a training output directory::

    <output_dir>/
      adapter_config.json, adapter_model.safetensors   the final adapter (PEFT format)
      tokenizer files                                   the tokenizer, beside the adapter
      checkpoints/
        step-000500/
          adapter_config.json, adapter_model.safetensors
          optimizer.safetensors    every optimizer tensor (AdamW moments, step counts)
          optimizer.json           the rest of the optimizer state (param groups)
          rng.safetensors          torch CPU / CUDA / MPS random states
          trainer_state.json       step, data position, scheduler, python RNG, training args
        latest                     name of the newest complete checkpoint, updated last
        step-000400.damaged/       a checkpoint that could not be loaded, set aside by --resume
      best/                        adapter with the lowest validation loss (--save-best)
      training_summary.json, metrics.jsonl, runs/   the summary, metrics and TensorBoard events

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
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from your_ai.files import fsync_dir, give_default_permissions, write_text_atomic

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
BEST_DIR = "best"
TRAINER_STATE_FILE = "trainer_state.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
SUMMARY_FILE = "training_summary.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "runs"
TEMP_PREFIX = ".tmp-"
DAMAGED_SUFFIX = ".damaged"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# What a training run writes into its output directory: the adapter and the tokenizer beside it
# (PEFT adds a README.md model card), the summary, metrics, TensorBoard events, checkpoints, best/.
_RUN_ENTRY = re.compile(
    r"^(adapter_.+|tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\.(json|txt)|merges\.txt"
    r"|chat_template\.(jinja|json)|spiece\.model|README\.md|training_summary\.json|metrics\.jsonl|runs"
    r"|checkpoints|best|\.tmp-.*)$"
)
# Entries only a training run writes: their presence marks a directory as a run's.
RUN_MARKERS = (CHECKPOINTS_DIR, SUMMARY_FILE, METRICS_FILE, TENSORBOARD_DIR)
SAFETENSORS_FILES = (ADAPTER_WEIGHTS_FILE, "optimizer.safetensors", "rng.safetensors")
JSON_FILES = (ADAPTER_CONFIG_FILE, "optimizer.json", TRAINER_STATE_FILE)


class CheckpointError(Exception):
    """A checkpoint that cannot be read or used; the message says which and why."""


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


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Delete ``.tmp-*`` leftovers of killed writes in ``output_dir`` and its checkpoints dir."""
    removed = []
    for folder in (Path(output_dir), Path(output_dir) / CHECKPOINTS_DIR):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
    return removed


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
    """The final adapter into ``output_dir`` itself: written to a temporary directory, then each
    file moved into place with ``os.replace`` (files from an earlier run are replaced, not mixed)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}adapter-", dir=output_dir))
    try:
        write_adapter(model, staging, base_model=base_model, tokenizer=tokenizer, state_dict=state_dict)
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

def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


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


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (temporary directories of killed writes are not listed)."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / TRAINER_STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _marker_name(output_dir: Path) -> tuple[str | None, str | None]:
    """The checkpoint name ``latest`` holds, and a note when it holds something that is not one of
    this run's checkpoints (a path such as ``../x`` or ``/abs/step-000001`` is never followed)."""
    marker = checkpoints_dir(output_dir) / LATEST_FILE
    if not marker.is_file():
        return None, None
    try:
        name = marker.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        return None, f"{marker} cannot be read ({error}); ignored"
    if not _STEP_DIR.match(name):
        return None, f"{marker} names {name!r}, not a checkpoint of this run; ignored"
    return name, None


def find_latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or the newest complete one if the marker is missing, stale or
    names something outside ``checkpoints/``."""
    name, _ = _marker_name(output_dir)
    named = checkpoints_dir(output_dir) / name if name else None
    if named is not None and (named / TRAINER_STATE_FILE).is_file():
        return named
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def verify_checkpoint(checkpoint: Path) -> None:
    """Raise ``CheckpointError`` naming the file and the reason when ``checkpoint`` cannot be loaded:
    a missing file, JSON that does not parse, a safetensors file whose header or length is wrong."""
    checkpoint = Path(checkpoint)
    for name in JSON_FILES:
        try:
            json.loads((checkpoint / name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{checkpoint / name}: {_reason(error)}") from None
    for name in SAFETENSORS_FILES:
        try:
            with safe_open(str(checkpoint / name), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own SafetensorError (and OSError)
            raise CheckpointError(f"{checkpoint / name}: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    return "does not exist" if isinstance(error, FileNotFoundError) else str(error).splitlines()[0]


@dataclass
class ResumePoint:
    """Where ``--resume`` continues: the newest checkpoint that loads (``None``: none does), the
    newer ones that do not (with the reason), and notes for the user."""

    checkpoint: Path | None
    damaged: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_resumable_checkpoint(output_dir: Path) -> ResumePoint:
    """The newest checkpoint of ``output_dir`` that loads (the one ``latest`` names first, when it is
    one of this run's); damaged newer ones are listed, not touched."""
    name, note = _marker_name(output_dir)
    point = ResumePoint(None, notes=[note] if note else [])
    candidates = [path for _, path in reversed(list_checkpoints(output_dir))]
    candidates.sort(key=lambda path: path.name != name)  # stable: the marker's first, then newest first
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            point.damaged.append((path, str(error)))
            continue
        point.checkpoint = path
        break
    if point.damaged and point.checkpoint is not None:
        for path, reason in point.damaged:
            point.notes.append(f"checkpoint {path.name} cannot be loaded ({reason}); it is kept, renamed "
                               f"{path.name}{DAMAGED_SUFFIX}")
        point.notes.append(f"resuming from {point.checkpoint.name}, the newest checkpoint that loads")
    return point


def set_aside_damaged(checkpoint: Path) -> Path:
    """Rename a checkpoint that cannot be loaded to ``<name>.damaged`` (``.damaged-2`` ... if taken):
    kept for inspection, no longer listed, pruned or overwritten by the resumed run."""
    checkpoint = Path(checkpoint)
    target = checkpoint.with_name(checkpoint.name + DAMAGED_SUFFIX)
    count = 1
    while target.exists():
        count += 1
        target = checkpoint.with_name(f"{checkpoint.name}{DAMAGED_SUFFIX}-{count}")
    os.rename(checkpoint, target)
    fsync_dir(checkpoint.parent)
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


# ---------------------------------------------------------------------------- the output directory

@dataclass
class OutputDirContents:
    """What an output directory holds: entries a training run writes, and everything else."""

    path: Path
    run_entries: list[str] = field(default_factory=list)
    other_entries: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.run_entries and not self.other_entries

    @property
    def is_run(self) -> bool:
        """Holds something only a training run writes (checkpoints, summary, metrics, TensorBoard)."""
        return any(name in RUN_MARKERS for name in self.run_entries)


def inspect_output_dir(output_dir: Path) -> OutputDirContents:
    output_dir = Path(output_dir)
    contents = OutputDirContents(output_dir)
    if output_dir.is_dir():
        for path in sorted(output_dir.iterdir()):
            (contents.run_entries if _RUN_ENTRY.match(path.name) else contents.other_entries).append(path.name)
    return contents


def remove_run_entries(contents: OutputDirContents) -> list[str]:
    """Delete the entries a training run wrote (``contents.run_entries``) and nothing else; returns
    their names (``name/`` for a directory)."""
    removed = []
    for name in contents.run_entries:
        path = contents.path / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(f"{name}/")
        else:
            path.unlink(missing_ok=True)
            removed.append(name)
    return removed


def read_trainer_state(checkpoint: Path) -> dict:
    path = Path(checkpoint) / TRAINER_STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot be read ({error})") from None


def load_checkpoint(checkpoint: Path, *, model, optimizer, scheduler) -> dict:
    """Restore adapter weights, optimizer, scheduler and RNG from ``checkpoint``; return its trainer state."""
    load_adapter_weights(model, checkpoint)
    return load_training_state(checkpoint, optimizer=optimizer, scheduler=scheduler)


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

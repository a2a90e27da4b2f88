"""The output directory of a training run: its layout, what an earlier run left there, and which
checkpoint a resumed run continues (read and checked, never written here: ``checkpoints`` writes).

Layout::

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
      trackers.json, wandb/        the wandb run id and (unless WANDB_DIR is set) wandb's files (--report-to)
      run.yaml                     the run's settings, resolved (``your_ai.train.run_file``): a run file
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from your_ai.files import fsync_dir

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
BEST_DIR = "best"
TRAINER_STATE_FILE = "trainer_state.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
SUMMARY_FILE = "training_summary.json"
RUN_FILE = "run.yaml"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "runs"
TRACKERS_FILE = "trackers.json"  # the wandb run id a resumed run continues (your_ai.train.sinks)
TEMP_PREFIX = ".tmp-"
DAMAGED_SUFFIX = ".damaged"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# What a training run writes into its output directory: the adapter and the tokenizer beside it
# (PEFT adds a README.md model card), the summary, the run file, metrics, TensorBoard events, trackers' files,
# checkpoints, best/.
_RUN_ENTRY = re.compile(
    r"^(adapter_.+|tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\.(json|txt)|merges\.txt"
    r"|chat_template\.(jinja|json)|spiece\.model|README\.md|training_summary\.json|run\.yaml|metrics\.jsonl|runs"
    r"|trackers\.json|wandb|checkpoints|best|\.tmp-.*)$"
)
# Entries only a training run writes: their presence marks a directory as a run's.
RUN_MARKERS = (CHECKPOINTS_DIR, SUMMARY_FILE, RUN_FILE, METRICS_FILE, TENSORBOARD_DIR)
SAFETENSORS_FILES = (ADAPTER_WEIGHTS_FILE, "optimizer.safetensors", "rng.safetensors")
JSON_FILES = (ADAPTER_CONFIG_FILE, "optimizer.json", TRAINER_STATE_FILE)


class CheckpointError(Exception):
    """A checkpoint that cannot be read or used; the message says which and why."""


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


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


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

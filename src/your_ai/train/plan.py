"""What to train, decided before any model is loaded: the run plan (settings, output directory, the
checkpoint a resumed run continues), the objective, and the run's data read, checked, scored and tokenized.

Nothing here runs a model: another engine can take a ``RunPlan`` and its ``RunData`` as they are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from your_ai.data.examples import Example, tokenize_records
from your_ai.data.records import (
    TRAIN_FILE,
    VAL_FILE,
    TrainingFiles,
    checked_records,
    no_records,
    training_files,
)
from your_ai.data.score_cache import FileScores, cached_file_scores
from your_ai.data.scores import default_workers
from your_ai.data.token_cache import CachedExamples, CacheUse, cached_tokens
from your_ai.files import hash_files
from your_ai.model.presets import PRESETS
from your_ai.model.resolve import your_ai_cache_dir
from your_ai.objective.distrust import (
    DEFAULT_ALPHA,
    MODES,
    DistrustWeighting,
    check_alpha,
)
from your_ai.train.args import (
    TrainingArgs,
    TrainingArgsError,
    TrainingError,
    merge_for_resume,
)
from your_ai.train.defaults import DEFAULTS
from your_ai.train.outputs import (
    ADAPTER_WEIGHTS_FILE,
    SUMMARY_FILE,
    CheckpointError,
    OutputDirContents,
    checkpoints_dir,
    find_resumable_checkpoint,
    inspect_output_dir,
    list_checkpoints,
    read_trainer_state,
    remove_run_entries,
    remove_stale_temporaries,
    set_aside_damaged,
)


@dataclass(frozen=True)
class Objective:
    """How the distrust term enters the loss (see ``your_ai.objective.distrust``).

    ``weighted`` needs ``weighting`` (fixed once from the training set); ``additive`` adds
    ``lambda_weight * sum(d)`` to the mean cross-entropy and changes no gradient.
    """

    mode: str = DEFAULTS["distrust_mode"]
    alpha: float = DEFAULT_ALPHA
    lambda_weight: float = DEFAULTS["lambda_weight"]
    weighting: DistrustWeighting | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"distrust mode {self.mode!r} must be one of {', '.join(MODES)}")
        check_alpha(self.alpha)

    @classmethod
    def from_dataset(cls, mode: str, alpha: float, lambda_weight: float, auth_weights, prov_entropies) -> "Objective":
        """The objective for a training set: in weighted mode the normaliser is fixed here, once."""
        weighting = None
        if mode == "weighted":
            weighting = DistrustWeighting.from_dataset(auth_weights, prov_entropies, alpha, lambda_weight)
        return cls(mode=mode, alpha=alpha, lambda_weight=lambda_weight, weighting=weighting)


@dataclass
class RunPlan:
    """What ``plan_run`` decided before anything is loaded: the settings, the output directory, and for a
    resumed run the checkpoint and its state."""

    args: TrainingArgs
    output_dir: Path
    checkpoint: Path | None = None
    state: dict | None = None
    notes: list[str] = field(default_factory=list)
    damaged: list[Path] = field(default_factory=list)  # checkpoints that do not load: set aside, never deleted
    replaced: OutputDirContents | None = None  # --overwrite: the earlier run's files, removed before writing

    @property
    def finished(self) -> bool:
        """A resumed run whose checkpoint is at --max-steps and whose final adapter is written."""
        return (self.state is not None and self.state.get("step", 0) >= self.args.max_steps
                and (self.output_dir / ADAPTER_WEIGHTS_FILE).is_file())


def plan_run(given: TrainingArgs) -> RunPlan:
    """Defaults, the output directory's rules, resume merge and validation."""
    given.validate()
    provisional = given.with_defaults()
    output_dir = Path(provisional.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainingError(f"--output-dir {output_dir} is a file; pass a directory")
    if not given.resume:
        replaced = _check_new_run_dir(output_dir, given.overwrite)
        return RunPlan(_new_run_args(provisional), output_dir, replaced=replaced)
    point = find_resumable_checkpoint(output_dir)
    if point.checkpoint is None:
        raise TrainingError(_nothing_to_resume(output_dir, point.damaged))
    state = read_trainer_state(point.checkpoint)
    args = merge_for_resume(given, state["args"], output_dir)
    args.validate()
    return RunPlan(args, output_dir, point.checkpoint, state, point.notes, [path for path, _ in point.damaged])


def planned_args(given: TrainingArgs) -> TrainingArgs:
    """The settings ``plan_run`` gives a run of ``given`` (a resumed run's from its checkpoint), without the
    output directory's rules for a new run: what ``train --print-config`` shows."""
    if given.resume:
        return plan_run(given).args
    given.validate()
    return _new_run_args(given.with_defaults())


def _new_run_args(provisional: TrainingArgs) -> TrainingArgs:
    """A new run's settings with the data and a model directory as absolute paths, checked."""
    args = replace(provisional, data=str(Path(provisional.data).resolve()), model=_absolute_if_dir(provisional.model))
    args.validate()
    return args


def prepare_output_dir(planned: RunPlan, notes: list[str]) -> None:
    """Before a run's first write: ``--overwrite`` removes the earlier run's files; a resumed run sets its
    damaged checkpoints aside (renamed, not deleted); unfinished temporary writes are removed."""
    if planned.replaced is not None:
        removed = remove_run_entries(planned.replaced)
        notes.append(f"--overwrite: removed the earlier run's {names_of(removed, shown=len(removed))} "
                     f"from {planned.output_dir}")
    for path in planned.damaged:
        if path.exists():
            set_aside_damaged(path)
    planned.output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(planned.output_dir)


def _check_new_run_dir(output_dir: Path, overwrite: bool) -> OutputDirContents | None:
    """A new run writes into an empty or new directory. One holding an earlier run is refused, or with
    ``overwrite`` returned (its files are removed once the run starts writing); one holding anything
    a training run does not write is refused, also with ``overwrite``."""
    contents = inspect_output_dir(output_dir)
    if contents.empty:
        return None
    if not contents.is_run:
        held = names_of(contents.other_entries or contents.run_entries)
        raise TrainingError(
            f"--output-dir {output_dir} is not empty and holds no training run ({held}); pass a new or empty "
            f"--output-dir" + (" (--overwrite replaces only a training run)" if overwrite else "")
        )
    if not overwrite:
        raise TrainingError(
            f"{output_dir} already holds a training run ({_run_status(output_dir)}); continue it with --resume, "
            f"start it over with --overwrite (removes its adapter, checkpoints, metrics and best/), "
            f"or pass another --output-dir"
        )
    if contents.other_entries:
        raise TrainingError(
            f"--overwrite: {output_dir} also holds {names_of(contents.other_entries)}, which training does not "
            f"write; move them away or pass another --output-dir (nothing was removed)"
        )
    return contents


def names_of(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _run_status(output_dir: Path) -> str:
    """How far the run in ``output_dir`` got, from its summary or its newest checkpoint."""
    try:
        summary = json.loads((output_dir / SUMMARY_FILE).read_text())
        return f"finished {summary['steps']} of {summary['args']['max_steps']} steps"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = list_checkpoints(output_dir)
    if not found:
        return "stopped before its first checkpoint"
    try:
        total = read_trainer_state(found[-1][1])["args"]["max_steps"]
        return f"checkpoint at step {found[-1][0]} of {total}"
    except (CheckpointError, KeyError, TypeError):
        return f"checkpoint at step {found[-1][0]}"


def _nothing_to_resume(output_dir: Path, damaged: list[tuple[Path, str]]) -> str:
    if damaged:
        reasons = "; ".join(reason for _, reason in damaged)
        return (f"--resume: no checkpoint in {checkpoints_dir(output_dir)} can be loaded ({reasons}); "
                f"start over with --overwrite or pass another --output-dir")
    if (output_dir / SUMMARY_FILE).is_file():
        return (f"--resume: {output_dir} holds a run that {_run_status(output_dir)} and has no checkpoints; "
                f"nothing to resume (start over with --overwrite, or pass another --output-dir)")
    return f"--resume: no complete checkpoint in {checkpoints_dir(output_dir)}"


def _absolute_if_dir(model: str) -> str:
    """A model directory as an absolute path (so a resumed run finds it from anywhere); other names as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if model not in PRESETS and path.is_dir() else model


def _data_digest(files: TrainingFiles) -> str:
    """The sha256 of the training file's bytes followed by the validation file's, read in blocks."""
    return hash_files(hashlib.sha256(), *(path for path in (files.train, files.val) if path is not None)).hexdigest()


@dataclass
class RunData:
    """The run's data: checked and scored (``read_run_data``), then tokenized (``tokenize``). The records
    themselves are not held: their scores are, and their tokens come from the tokenized cache."""

    files: TrainingFiles
    digest: str  # sha256 of the training and validation files: a resumed run needs the same data
    objective: Objective  # in weighted mode, with the normaliser fixed from the training records
    train_scores: FileScores  # each training record's auth_weight and prov_entropy
    val_scores: FileScores | None
    train_examples: list[Example] = field(default_factory=list)  # or a CachedExamples: a list of Example too
    val_examples: list[Example] = field(default_factory=list)
    token_caches: list[CacheUse] = field(default_factory=list)  # the tokenized cache entries built or reused

    @property
    def normaliser(self) -> float | None:
        """The mean distrust value of the training records (weighted mode)."""
        return self.objective.weighting.normaliser if self.objective.weighting else None

    def tokenize(self, tokenizer, max_seq_length: int, notes: list[str], cache_dir: Path | None = None) -> None:
        """The records as examples of at most ``max_seq_length`` tokens, from the tokenized cache in
        ``cache_dir`` (default: the user cache's ``tokens``), built there by the first run; what is lost is
        noted. Without a writable cache the records are tokenized in memory, with a note."""
        cache_dir = Path(cache_dir) if cache_dir is not None else your_ai_cache_dir() / "tokens"
        self.train_examples, inexact, empty = self._examples(self.files.train, self.train_scores, tokenizer,
                                                             max_seq_length, cache_dir, notes)
        if self.val_scores is not None:
            self.val_examples, _, _ = self._examples(self.files.val, self.val_scores, tokenizer, max_seq_length,
                                                     cache_dir, notes)
        if inexact:
            notes.append(f"{inexact} chat record(s) learned whole: the chat template does not render turn by turn")
        if empty:
            notes.append(f"{empty} training record(s) have nothing to learn within --max-seq-length {max_seq_length}")

    def _examples(self, file: Path, scores: FileScores, tokenizer, max_seq_length: int, cache_dir: Path,
                  notes: list[str]) -> tuple[list[Example], int, int]:
        """(examples, chat records learned whole, records with nothing to learn) of one data file."""
        weights, entropies = scores.auth_weights.tolist(), scores.prov_entropies.tolist()
        try:
            tokens, use = cached_tokens(cache_dir, file, len(scores), tokenizer, max_seq_length, default_workers())
        except OSError as error:
            notes.append(f"the tokenized cache in {cache_dir} cannot be written ({error}); tokenized in memory")
            examples, inexact = tokenize_records(checked_records(file), weights, entropies, tokenizer, max_seq_length)
            return examples, inexact, sum(1 for example in examples if example.target_tokens == 0)
        self.token_caches.append(use)
        if use.note:
            notes.append(use.note)
        return CachedExamples(tokens, weights, entropies), tokens.inexact, int((tokens.target_tokens() == 0).sum())


def data_file_scores(path: str | Path) -> FileScores:
    """A data file's record scores: from the user cache's ``scores`` when an earlier run kept them there,
    else read from the file (stopping at its first bad line) and kept there."""
    return cached_file_scores(your_ai_cache_dir() / "scores", path, default_workers())[0]


def read_run_data(planned: RunPlan, notes: list[str]) -> RunData:
    """Check and score the run's data (or take its scores from the cache); the objective's normaliser is
    fixed here, once."""
    args = planned.args
    files = training_files(args.data)
    digest = _data_digest(files)  # one read of each file: its own sha256, for the caches' keys, comes with it
    train_scores = data_file_scores(files.train)
    if not len(train_scores):
        raise no_records(files.train)
    val_scores = data_file_scores(files.val) if files.val else None
    if val_scores is not None and not len(val_scores):
        val_scores = None
    if args.save_best and val_scores is None:
        raise TrainingArgsError(
            f"--save-best needs a validation set: pass a directory holding {TRAIN_FILE} and {VAL_FILE} as --data"
        )
    computed = train_scores.computed + (val_scores.computed if val_scores is not None else 0)
    if computed:
        notes.append(f"scored {computed} record(s) without auth_weight/prov_entropy from their text and metadata")
    if planned.state is not None and planned.state.get("data_sha256") != digest:
        raise TrainingError(f"the data in {args.data} changed since checkpoint {planned.checkpoint}; a resumed run "
                            f"needs the same data")
    objective = Objective.from_dataset(args.distrust_mode, args.alpha, args.lambda_weight,
                                       train_scores.auth_weights, train_scores.prov_entropies)
    return RunData(files, digest, objective, train_scores, val_scores)

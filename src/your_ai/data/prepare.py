"""``prepare``: score, deduplicate, balance and split raw JSONL files into train.jsonl and val.jsonl.

``prepare`` works in two streaming passes so that memory does not grow with the number
of documents, apart from the deduplication index (two 64-bit hashes per document) and a
few bytes per kept document:

1. Read every input line, check it (``your_ai.data.records``), drop exact and near duplicates by
   hash, score documents that carry no ``auth_weight``/``prov_entropy``
   (``your_ai.objective.scoring``), and append each kept record, already in its output form, to a
   spill file in the output directory. Only its byte offset and authority tier are kept
   in memory.
2. Balancing and splitting decide on those compact arrays (seeded); the spill file is
   then read record by record into ``train.jsonl`` and ``val.jsonl``.

Both outputs are written to temporary files in the output directory and renamed into
place at the very end: a failed run leaves existing outputs untouched.

Tiers and the target mix: ``your_ai.data.balance``; duplicates: ``your_ai.data.dedup``.
"""

from __future__ import annotations

import contextlib
import json
import os
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable

import numpy as np

from your_ai.data.balance import (
    TIER_NAMES,
    TIERS,
    BalancePlan,
    apportion,
    in_band,
    no_balance,
    plan_balance,
    split_sizes,
    tier_index,
)
from your_ai.data.dedup import Deduplicator, first_occurrences
from your_ai.data.inputs import (
    ErrorLog,
    PrepareError,
    expand_inputs,
    json_line,
    no_records_left,
)
from your_ai.data.records import DataError, Record
from your_ai.data.scores import Scores, score_records
from your_ai.files import remove_abandoned, temporary_sibling
from your_ai.objective.scoring_rules import METADATA_FIELDS

CONTENT_FIELDS = {"text": ("text",), "chat": ("messages",), "prompt": ("prompt", "completion")}


def output_record(record: Record, auth_weight: float, prov_entropy: float, scored: bool) -> dict[str, Any]:
    """The prepared form: content fields as given, scores, provenance fields, ``scored``."""
    out: dict[str, Any] = {key: record.fields[key] for key in CONTENT_FIELDS[record.kind]}
    out["auth_weight"] = auth_weight
    out["prov_entropy"] = prov_entropy
    for key in METADATA_FIELDS:
        if record.fields.get(key) is not None:
            out[key] = record.fields[key]
    out["scored"] = scored
    return out


@dataclass
class PrepareReport:
    files: list[str]
    output_dir: str
    read: int = 0
    bad: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    scored: int = 0
    carried: int = 0
    outside_bands: int = 0
    available: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    balance: dict[str, Any] = field(default_factory=dict)
    requested: dict[str, Any] = field(default_factory=dict)
    train: int = 0
    val: int = 0
    train_by_tier: dict[str, int] = field(default_factory=dict)
    val_by_tier: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


REPORT_NAME = "prepare_report.json"


def prepare(
    inputs: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    train_size: int | None = None,
    val_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 42,
    balance: bool = True,
    skip_bad: bool = False,
    key: str | None = None,
    workers: int = 1,
    on_error: Callable[[DataError], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PrepareReport:
    """Score, deduplicate, balance and split raw JSONL files into ``train.jsonl``/``val.jsonl``.

    Documents are scored in ``workers`` processes (the result does not depend on how many).
    Every bad line is passed to ``on_error`` as it is found; ``on_progress`` gets the number
    of lines read every ``dedup.PROGRESS_EVERY`` lines. Without ``skip_bad`` a run with
    bad lines raises ``PrepareError`` after reading everything and writes nothing.
    Outputs (``train.jsonl``, ``val.jsonl``, ``prepare_report.json``) replace existing ones
    only when the whole run succeeded.
    """
    split_sizes(0, train_size, val_size, val_fraction)  # check the arguments before any work
    files = expand_inputs(inputs)
    out = Path(output_dir)
    targets = {name: out / f"{name}.jsonl" for name in ("train", "val")}
    for path in files:
        if any(path.resolve() == target.resolve() for target in targets.values()):
            raise PrepareError(f"input {path} is also an output of this run; choose another --output")
    created = not out.is_dir()  # removed again when the run writes nothing
    out.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(files=[str(p) for p in files], output_dir=str(out), seed=seed)
    report.requested = {"train_size": train_size, "val_size": val_size, "val_fraction": val_fraction}
    report.outputs = {**{name: str(path) for name, path in targets.items()}, "report": str(out / REPORT_NAME)}
    scratch = _Scratch(out)
    try:
        errors = ErrorLog(on_error, skip_bad)
        records = first_occurrences(files, Deduplicator(key), errors, report, on_progress)
        with scratch.open("spill") as spill:
            offsets, tiers = _spill(errors.good(score_records(records, workers)), spill, report)
        report.bad, report.errors = errors.count, errors.messages
        if errors.failing:
            raise errors.failure()
        if not tiers:
            raise no_records_left(files, report.read, "write")
        order = _split(np.frombuffer(tiers, dtype=np.int8), report, balance, val_fraction, seed)
        written = _copy_rows(Path(spill.name), np.frombuffer(offsets, dtype=np.int64), order, scratch)
        with scratch.open(REPORT_NAME) as sink:
            sink.write((json.dumps(report.to_dict(), indent=2) + "\n").encode("utf-8"))
        written["report"] = Path(sink.name)
        for name, path in written.items():
            os.replace(path, report.outputs[name])
        created = False
        return report
    finally:
        scratch.remove()
        if created:
            with contextlib.suppress(OSError):  # something else was put there meanwhile
                out.rmdir()


SCRATCH_PREFIX = ".prepare-"  # + the process id: the hidden temporary files of a run


class _Scratch:
    """The temporary files of a run, beside its outputs; whatever was not renamed into place is removed, and
    those of runs killed before they could remove theirs are removed when the next run starts."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.paths: list[Path] = []
        remove_abandoned(directory, SCRATCH_PREFIX)

    def open(self, name: str) -> IO:
        handle = temporary_sibling(self.directory / f"{SCRATCH_PREFIX[1:]}{os.getpid()}-{name}")
        self.paths.append(Path(handle.name))
        return handle

    def remove(self) -> None:
        for path in self.paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def _spill(scored: Iterable[tuple[Record, Scores]], spill: IO, report: PrepareReport) -> tuple[array, array]:
    """Pass 1: append each scored record, in its output form, to ``spill``. Returns the byte offset
    of every record (and of the end of the last one) and its authority tier."""
    offsets, tiers = array("q"), array("b")
    position = 0
    for item, scores in scored:
        weight, entropy, was_scored = scores
        if was_scored:
            report.scored += 1
        else:
            report.carried += 1
        report.outside_bands += not in_band(weight)
        line = json_line(output_record(item, weight, entropy, was_scored))
        spill.write(line)
        offsets.append(position)
        tiers.append(tier_index(weight))
        position += len(line)
    offsets.append(position)
    return offsets, tiers


def _split(tier_of: np.ndarray, report: PrepareReport, balance: bool, val_fraction: float,
           seed: int) -> dict[str, np.ndarray]:
    """Balance and split on the compact arrays: the spill rows of train and val, each in a seeded
    random order. Records the plan and the sizes in ``report``."""
    counts = [int((tier_of == t).sum()) for t in range(len(TIERS))]
    plan = plan_balance(counts) if balance else no_balance(counts)
    requested = report.requested
    train_n, val_n = split_sizes(plan.total, requested["train_size"], requested["val_size"], val_fraction)
    val_per_tier = apportion(val_n, plan.keep, plan.keep)
    train_per_tier = apportion(train_n, plan.keep, [k - v for k, v in zip(plan.keep, val_per_tier)])
    rng = np.random.default_rng(seed)
    train_rows, val_rows = [], []
    for t in range(len(TIERS)):
        chosen = rng.permutation(np.flatnonzero(tier_of == t))[: plan.keep[t]]
        val_rows.append(chosen[: val_per_tier[t]])
        train_rows.append(chosen[val_per_tier[t] : val_per_tier[t] + train_per_tier[t]])
    order = {
        "train": rng.permutation(np.concatenate(train_rows)),
        "val": rng.permutation(np.concatenate(val_rows)),
    }
    _record_split(report, counts, plan, balance, (train_n, val_n), (train_per_tier, val_per_tier))
    return order


def _record_split(report: PrepareReport, counts: list[int], plan: BalancePlan, balance: bool,
                  sizes: tuple[int, int], per_tier: tuple[list[int], list[int]]) -> None:
    train_per_tier, val_per_tier = per_tier
    report.available = dict(zip(TIER_NAMES, counts))
    report.kept = dict(zip(TIER_NAMES, plan.keep))
    report.balance = {
        "enabled": balance,
        "reached": plan.reached,
        "widened_by_points": plan.widened_by,
        "message": plan.message,
        "target": {t.name: [t.min_share, t.max_share] for t in TIERS},
    }
    report.train, report.val = sizes
    report.train_by_tier = dict(zip(TIER_NAMES, train_per_tier))
    report.val_by_tier = dict(zip(TIER_NAMES, val_per_tier))


def _copy_rows(spill: Path, bounds: np.ndarray, order: dict[str, np.ndarray], scratch: _Scratch) -> dict[str, Path]:
    """Pass 2: copy the chosen records from the spill file, in their order, into temporary files."""
    written: dict[str, Path] = {}
    with open(spill, "rb", buffering=0) as source:
        for name, rows in order.items():
            with scratch.open(f"{name}.jsonl") as sink:
                for row in rows.tolist():
                    start = int(bounds[row])
                    source.seek(start)
                    sink.write(source.read(int(bounds[row + 1]) - start))
            written[name] = Path(sink.name)
    return written


def format_prepare_report(report: PrepareReport) -> str:
    """The human-readable summary printed by ``your-ai prepare``."""
    lines = [
        f"Read        {report.read} lines from {len(report.files)} file{'s' if len(report.files) != 1 else ''}",
        f"Bad         {report.bad}" + (" (skipped)" if report.bad else ""),
        f"Duplicates  {report.exact_duplicates + report.near_duplicates} "
        f"(exact {report.exact_duplicates}, near {report.near_duplicates})",
        f"Scores      {report.scored} computed, {report.carried} carried from the input",
        f"Outside     {report.outside_bands} with a weight outside every band (assigned to the nearest tier)",
        "",
        f"{'Tier':<8} {'band':>11} {'target':>8} {'available':>10} {'kept':>8} {'share':>7} {'train':>8} {'val':>7}",
    ]
    total_kept = sum(report.kept.values()) or 1
    for tier in TIERS:
        kept = report.kept.get(tier.name, 0)
        lines.append(
            f"{tier.name:<8} {f'{tier.low:.2f}-{tier.high:.2f}':>11} "
            f"{f'{100 * tier.min_share:.0f}-{100 * tier.max_share:.0f}%':>8} "
            f"{report.available.get(tier.name, 0):>10} {kept:>8} {100 * kept / total_kept:>6.1f}% "
            f"{report.train_by_tier.get(tier.name, 0):>8} {report.val_by_tier.get(tier.name, 0):>7}"
        )
    lines += [
        "",
        f"Balance     {report.balance.get('message', '')}",
        f"Written     train {report.train} -> {report.outputs.get('train')}",
        f"            val   {report.val} -> {report.outputs.get('val')}",
    ]
    return "\n".join(lines)

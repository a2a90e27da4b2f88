"""Data pipeline: prepare (score, deduplicate, balance, split), deduplicate, analyze.

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

Authority tiers (the target mix of a prepared training set)::

    low     0.03 <= w <= 0.20    25-30% of the records
    medium  0.40 <= w <= 0.65    25-35%
    high    0.75 <= w <= 0.95    35-40%

A weight outside every band is assigned to the nearest tier: below 0.30 is low, from
0.30 to below 0.70 is medium, 0.70 and above is high (0.30 and 0.70 are the midpoints of
the gaps between the bands). Reports count such records separately.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import math
import os
import re
import unicodedata
from array import array
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from your_ai.data.records import METADATA_FIELDS, DataError, Record, iter_records
from your_ai.files import atomic_file, save_figure_atomic, temporary_sibling

# --------------------------------------------------------------------------- tiers


@dataclass(frozen=True)
class Tier:
    """An authority band and the share of a prepared set it should hold."""

    name: str
    low: float
    high: float
    min_share: float
    max_share: float


TIERS: tuple[Tier, ...] = (
    Tier("low", 0.03, 0.20, 0.25, 0.30),
    Tier("medium", 0.40, 0.65, 0.25, 0.35),
    Tier("high", 0.75, 0.95, 0.35, 0.40),
)
TIER_NAMES = tuple(tier.name for tier in TIERS)
# Weights between two bands go to the nearer one: the cut is the middle of the gap.
TIER_CUTS = tuple((TIERS[i].high + TIERS[i + 1].low) / 2 for i in range(len(TIERS) - 1))


def tier_index(authority_weight: float) -> int:
    """Index into ``TIERS`` of the tier a weight belongs to (nearest band)."""
    for index, cut in enumerate(TIER_CUTS):
        if authority_weight < cut:
            return index
    return len(TIERS) - 1


def in_band(authority_weight: float) -> bool:
    """Whether a weight lies inside its tier's band (not merely nearest to it)."""
    tier = TIERS[tier_index(authority_weight)]
    return tier.low <= authority_weight <= tier.high


# --------------------------------------------------------------------------- inputs


class PrepareError(RuntimeError):
    """A run that cannot produce outputs (bad lines without ``skip_bad``, nothing left)."""


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths, globs and directories (their ``*.jsonl``, sorted) -> files, in order, once each.

    Raises ``PrepareError`` for a path that does not exist, a glob or directory that
    matches no ``.jsonl`` file, or no input at all.
    """
    files: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            files.append(path)

    for raw in paths:
        text = os.fspath(raw)
        path = Path(text)
        if path.is_dir():
            found = sorted(child for child in path.glob("*.jsonl") if child.is_file())
            if not found:
                raise PrepareError(f"directory {text} holds no *.jsonl file")
            for child in found:
                add(child)
        elif path.is_file():
            add(path)
        elif glob.has_magic(text):
            found = sorted(Path(match) for match in glob.glob(text, recursive=True) if Path(match).is_file())
            if not found:
                raise PrepareError(f"pattern {text!r} matches no file")
            for match in found:
                add(match)
        else:
            raise PrepareError(f"input {text} does not exist")
    if not files:
        raise PrepareError("no input files given")
    return files


def _iter_all(files: Sequence[Path]) -> Iterator[Record | DataError]:
    for path in files:
        yield from iter_records(path)


def _no_records(files: Sequence[Path], lines_read: int, left_to: str) -> PrepareError:
    """The error of a run with no good record: an empty input, or every line bad or skipped."""
    if lines_read:
        return PrepareError(f"no records left to {left_to}")
    names = ", ".join(str(path) for path in files)
    return PrepareError(f"no records in {names}: the input is empty (or holds only blank lines)")


MAX_ERRORS_KEPT = 1000


class ErrorLog:
    """Counts bad lines, keeps the first ``MAX_ERRORS_KEPT`` messages, passes each on."""

    def __init__(self, on_error: Callable[[DataError], None] | None = None):
        self.count = 0
        self.messages: list[str] = []
        self.on_error = on_error

    def add(self, error: DataError) -> None:
        self.count += 1
        if len(self.messages) < MAX_ERRORS_KEPT:
            self.messages.append(str(error))
        if self.on_error is not None:
            self.on_error(error)

    def failure(self, consequence: str = "nothing written") -> PrepareError:
        plural = "s" if self.count != 1 else ""
        return PrepareError(
            f"{self.count} bad line{plural}: {consequence} (fix them, or pass --skip-bad to leave them out)"
        )


# --------------------------------------------------------------------------- duplicates

_PUNCTUATION = re.compile(r"[^\w\s]|_")


def exact_form(text: str) -> str:
    """Text as compared for exact duplicates: line endings unified, outer whitespace removed."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def near_form(text: str) -> str:
    """Text as compared for near duplicates: NFKC, case-folded, punctuation removed,
    whitespace runs collapsed to one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCTUATION.sub("", text).split())


def text_hash(text: str) -> int:
    """64-bit BLAKE2b hash of a string (the deduplication index stores only these)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class Deduplicator:
    """Remembers hashes of what it has kept; says whether a record repeats one of them.

    Exact duplicates: same ``key`` field value when a key is given, else same
    ``exact_form`` text. Near duplicates: same ``near_form`` text.
    """

    def __init__(self, key: str | None = None):
        self.key = key
        self._exact: set[int] = set()
        self._near: set[int] = set()

    def key_value(self, record: Record) -> str:
        """The exact-duplicate key of a record; ``DataError`` when ``key`` is missing."""
        if self.key is None:
            return exact_form(record.document_text())
        value = record.fields.get(self.key)
        if value is None:
            raise DataError(record.file, record.line, f"no {self.key!r} field (needed by --key {self.key})")
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)

    def check(self, record: Record) -> str | None:
        """``"exact"``, ``"near"`` or ``None`` (new: remembered from now on)."""
        exact = text_hash(self.key_value(record))
        if exact in self._exact:
            return "exact"
        near = text_hash(near_form(record.document_text()))
        if near in self._near:
            return "near"
        self._exact.add(exact)
        self._near.add(near)
        return None


# --------------------------------------------------------------------------- scores

CONTENT_FIELDS = {"text": ("text",), "chat": ("messages",), "prompt": ("prompt", "completion")}


Scores = tuple[float, float, bool]  # (auth_weight, prov_entropy, scored_here)
SCORE_CHUNK = 256


def _score_texts(documents: list[tuple[str, dict]]) -> list[tuple[float, float] | str]:
    """Score ``(text, metadata)`` pairs: ``(w, H)`` each, or the scorer's error message."""
    from your_ai.objective.scoring import score_document

    results: list[tuple[float, float] | str] = []
    for text, metadata in documents:
        try:
            score = score_document(text, metadata)
        except ValueError as error:
            results.append(str(error))
        else:
            results.append((round(float(score.authority_weight), 6), round(float(score.provenance_entropy), 6)))
    return results


def _finish(record: Record, result: tuple[float, float] | str | None) -> Scores | DataError:
    if result is None:
        return record.auth_weight, record.prov_entropy, False
    if isinstance(result, str):
        return DataError(record.file, record.line, result)
    return result[0], result[1], True


def default_workers() -> int:
    """Processes that score documents by default: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def score_records(records: Iterable[Record], workers: int = 1) -> Iterator[tuple[Record, Scores | DataError]]:
    """``(record, (auth_weight, prov_entropy, scored_here))`` per record, in input order.

    Carried scores are kept as they are; other records are scored by
    ``your_ai.objective.scoring.score_document``, in ``workers`` processes when above 1 (in chunks of
    ``SCORE_CHUNK`` records, with a bounded number in flight, so memory stays flat). A record
    the scorer rejects gives a ``DataError`` naming its file and line instead of scores.
    """
    def chunks() -> Iterator[list[Record]]:
        chunk: list[Record] = []
        for record in records:
            chunk.append(record)
            if len(chunk) == SCORE_CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def unscored(chunk: list[Record]) -> list[tuple[str, dict]]:
        return [(r.document_text(), r.metadata) for r in chunk if not r.has_scores]

    def merge(chunk: list[Record], results: list) -> Iterator[tuple[Record, Scores | DataError]]:
        found = iter(results)
        for record in chunk:
            yield record, _finish(record, None if record.has_scores else next(found))

    pending = chunks()
    head = list(itertools.islice(pending, 2))
    if workers <= 1 or len(head) < 2:  # one process, or too little work to start a pool for
        for chunk in itertools.chain(head, pending):
            yield from merge(chunk, _score_texts(unscored(chunk)))
        return

    import multiprocessing

    with multiprocessing.get_context().Pool(workers) as pool:
        window: deque = deque()
        for chunk in itertools.chain(head, pending):
            window.append((chunk, pool.apply_async(_score_texts, (unscored(chunk),))))
            if len(window) > 2 * workers:
                done, result = window.popleft()
                yield from merge(done, result.get())
        while window:
            done, result = window.popleft()
            yield from merge(done, result.get())


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


def _json_line(value: dict) -> bytes:
    return (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- balance


@dataclass
class BalancePlan:
    """How many records of each tier to keep, and how close that comes to the target mix."""

    available: list[int]
    keep: list[int]
    reached: bool
    # Percentage points by which the bands had to be widened to keep anything (0 when reached).
    widened_by: float
    message: str

    @property
    def total(self) -> int:
        return sum(self.keep)


def _feasible_keep(counts: Sequence[int], bands: Sequence[tuple[float, float]]) -> list[int] | None:
    """Largest selection ``k_t <= counts[t]`` whose shares all lie in ``bands``; None if only 0."""
    total = sum(counts)
    tol = 1e-9

    def continuous_ok(n: int) -> bool:
        if any(a * n > c + tol for (a, _), c in zip(bands, counts)):
            return False
        return n <= sum(min(c, b * n) for (_, b), c in zip(bands, counts)) + tol

    low, high = 0, total
    while low < high:  # feasibility of the continuous relaxation is monotone in n
        mid = (low + high + 1) // 2
        if continuous_ok(mid):
            low = mid
        else:
            high = mid - 1
    for n in range(low, 0, -1):  # integer rounding can make the very top infeasible
        lows = [math.ceil(a * n - tol) for a, _ in bands]
        highs = [min(c, math.floor(b * n + tol)) for (_, b), c in zip(bands, counts)]
        if all(lo <= hi for lo, hi in zip(lows, highs)) and sum(lows) <= n <= sum(highs):
            return _choose_within(n, lows, highs)
    return None


def _choose_within(n: int, lows: list[int], highs: list[int]) -> list[int]:
    """Counts within ``[lows, highs]`` summing to ``n``, as near the band middles as possible."""
    middles = [(tier.min_share + tier.max_share) / 2 for tier in TIERS]
    keep = [min(max(round(mid * n), lo), hi) for mid, lo, hi in zip(middles, lows, highs)]
    excess = sum(keep) - n
    by_surplus = sorted(range(len(keep)), key=lambda i: (middles[i] * n - keep[i], i))
    for i in by_surplus:  # most over their middle first
        if excess <= 0:
            break
        take = min(excess, keep[i] - lows[i])
        keep[i] -= take
        excess -= take
    for i in reversed(by_surplus):  # most under their middle first
        if excess >= 0:
            break
        give = min(-excess, highs[i] - keep[i])
        keep[i] += give
        excess += give
    return keep


def plan_balance(counts: Sequence[int], step: float = 0.005) -> BalancePlan:
    """Downsample over-represented tiers to the target mix, keeping as many records as possible.

    When no selection reaches the mix (a tier is empty or too small), the bands are widened
    in steps of ``step`` until one does; ``widened_by`` says how far that went, in
    percentage points, and the message names the tiers that limit the result.
    """
    counts = list(counts)
    if sum(counts) == 0:
        return BalancePlan(counts, [0] * len(counts), False, 0.0, "no records to balance")
    steps = int(round(1.0 / step))
    for i in range(steps + 1):
        widen = i * step
        bands = [(max(0.0, t.min_share - widen), min(1.0, t.max_share + widen)) for t in TIERS]
        keep = _feasible_keep(counts, bands)
        if keep is not None:
            break
    else:  # pragma: no cover - the widest bands accept every selection
        keep, widen = counts, 1.0
    reached = i == 0
    total = sum(keep)
    limiting = [TIERS[t].name for t in range(len(TIERS)) if keep[t] == counts[t] and counts[t] < sum(counts)]
    limits = f"; limited by the {', '.join(limiting)} tier{'s' if len(limiting) > 1 else ''}" if limiting else ""
    if reached:
        message = f"target mix reached with {total} of {sum(counts)} records{limits}"
    else:
        shares = ", ".join(
            f"{TIERS[t].name} {100 * keep[t] / total:.1f}% (target {100 * TIERS[t].min_share:.0f}-"
            f"{100 * TIERS[t].max_share:.0f}%)"
            for t in range(len(TIERS))
        )
        message = (
            f"target mix not reachable with this data: closest mix is {shares}, "
            f"up to {100 * widen:.1f} points outside the bands, keeping {total} of {sum(counts)} records{limits}"
        )
    return BalancePlan(counts, keep, reached, round(100 * widen, 3), message)


def _no_balance(counts: Sequence[int]) -> BalancePlan:
    total = sum(counts)
    return BalancePlan(list(counts), list(counts), False, 0.0, f"balancing off: all {total} records kept")


# --------------------------------------------------------------------------- split


def split_sizes(
    available: int,
    train_size: int | None = None,
    val_size: int | None = None,
    val_fraction: float = 0.1,
) -> tuple[int, int]:
    """``(train, val)`` record counts from what is available and what was asked for.

    No sizes: ``val_fraction`` of the records go to val (at least one when there are two or
    more and the fraction is above 0). ``val_size`` only: the rest is train. ``train_size``
    only: val gets ``val_fraction`` of train + val. Both: exactly those. A request larger
    than what is available is scaled down in proportion.
    """
    if not 0.0 <= val_fraction < 1.0 or math.isnan(val_fraction):
        raise ValueError(f"val_fraction={val_fraction!r} is outside [0, 1)")
    for name, value in (("train_size", train_size), ("val_size", val_size)):
        if value is not None and value < 0:
            raise ValueError(f"{name}={value!r} must be >= 0")
    if train_size is None and val_size is None:
        val = round(val_fraction * available)
        if val_fraction > 0 and available >= 2:
            val = min(max(val, 1), available - 1)
        return available - val, val
    if train_size is None:
        val = min(val_size, available)
        return available - val, val
    if val_size is None:
        wanted_total = train_size / (1.0 - val_fraction)
        if wanted_total <= available:
            return train_size, min(round(wanted_total * val_fraction), available - train_size)
        val = round(val_fraction * available)
        return available - val, val
    if train_size + val_size <= available:
        return train_size, val_size
    val = round(val_size * available / (train_size + val_size))
    return available - val, val


def _apportion(total: int, weights: Sequence[int], caps: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders), within ``caps``."""
    weight_sum = sum(weights)
    quotas = [total * w / weight_sum if weight_sum else 0.0 for w in weights]
    alloc = [min(int(q), c) for q, c in zip(quotas, caps)]
    left = total - sum(alloc)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - int(quotas[i])), i))
    for i in order:
        if left and alloc[i] < caps[i]:
            alloc[i] += 1
            left -= 1
    for i in order:
        take = min(left, caps[i] - alloc[i])
        alloc[i] += take
        left -= take
    return alloc


# --------------------------------------------------------------------------- prepare


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
PROGRESS_EVERY = 10_000


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
    of lines read every ``PROGRESS_EVERY`` lines. Without ``skip_bad`` a run with
    bad lines raises ``PrepareError`` after reading everything and writes nothing.
    Outputs (``train.jsonl``, ``val.jsonl``, ``prepare_report.json``) replace existing ones
    only when the whole run succeeded.
    """
    import numpy as np

    split_sizes(0, train_size, val_size, val_fraction)  # check the arguments before any work
    files = expand_inputs(inputs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = {name: out / f"{name}.jsonl" for name in ("train", "val")}
    for path in files:
        if any(path.resolve() == target.resolve() for target in targets.values()):
            raise PrepareError(f"input {path} is also an output of this run; choose another --output")

    report = PrepareReport(files=[str(p) for p in files], output_dir=str(out), seed=seed)
    report.requested = {"train_size": train_size, "val_size": val_size, "val_fraction": val_fraction}
    dedupe = Deduplicator(key)
    errors = ErrorLog(on_error)
    offsets = array("q")
    tiers = array("b")
    temporaries: list[Path] = []

    def temporary(name: str):
        handle = temporary_sibling(out / name)
        temporaries.append(Path(handle.name))
        return handle

    def new_records() -> Iterator[Record]:
        """Checked, first-seen records; counts lines, bad lines and duplicates on the way."""
        for item in _iter_all(files):
            report.read += 1
            if on_progress is not None and report.read % PROGRESS_EVERY == 0:
                on_progress(report.read)
            if isinstance(item, Record):
                try:
                    duplicate = dedupe.check(item)
                except DataError as error:
                    item = error
            if isinstance(item, DataError):
                errors.add(item)
            elif errors.count and not skip_bad:
                continue  # the run will fail: keep checking lines, skip the work
            elif duplicate == "exact":
                report.exact_duplicates += 1
            elif duplicate == "near":
                report.near_duplicates += 1
            else:
                yield item

    try:
        # Pass 1: check, dedupe, score, spill.
        with temporary("prepare-spill") as spill:
            position = 0
            for item, scores in score_records(new_records(), workers):
                if isinstance(scores, DataError):
                    errors.add(scores)
                    continue
                if errors.count and not skip_bad:
                    continue
                weight, entropy, scored = scores
                if scored:
                    report.scored += 1
                else:
                    report.carried += 1
                report.outside_bands += not in_band(weight)
                line = _json_line(output_record(item, weight, entropy, scored))
                spill.write(line)
                offsets.append(position)
                tiers.append(tier_index(weight))
                position += len(line)
        report.bad, report.errors = errors.count, errors.messages
        if errors.count and not skip_bad:
            raise errors.failure()
        if not tiers:
            raise _no_records(files, report.read, "write")

        # Decide: balance and split on the compact arrays.
        tier_of = np.frombuffer(tiers, dtype=np.int8)
        counts = [int((tier_of == t).sum()) for t in range(len(TIERS))]
        plan = plan_balance(counts) if balance else _no_balance(counts)
        train_n, val_n = split_sizes(plan.total, train_size, val_size, val_fraction)
        val_per_tier = _apportion(val_n, plan.keep, plan.keep)
        train_per_tier = _apportion(train_n, plan.keep, [k - v for k, v in zip(plan.keep, val_per_tier)])
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

        # Pass 2: copy the chosen records from the spill file, in a seeded random order.
        offsets.append(position)  # the end of the last record
        bounds = np.frombuffer(offsets, dtype=np.int64)
        written: dict[str, Path] = {}
        with open(spill.name, "rb", buffering=0) as source:
            for name, rows in order.items():
                with temporary(f"{name}.jsonl") as sink:
                    for row in rows.tolist():
                        start = int(bounds[row])
                        source.seek(start)
                        sink.write(source.read(int(bounds[row + 1]) - start))
                written[name] = Path(sink.name)

        report.available = dict(zip(TIER_NAMES, counts))
        report.kept = dict(zip(TIER_NAMES, plan.keep))
        report.balance = {
            "enabled": balance,
            "reached": plan.reached,
            "widened_by_points": plan.widened_by,
            "message": plan.message,
            "target": {t.name: [t.min_share, t.max_share] for t in TIERS},
        }
        report.train, report.val = train_n, val_n
        report.train_by_tier = dict(zip(TIER_NAMES, train_per_tier))
        report.val_by_tier = dict(zip(TIER_NAMES, val_per_tier))
        report.outputs = {name: str(path) for name, path in targets.items()}
        report.outputs["report"] = str(out / REPORT_NAME)
        with temporary(REPORT_NAME) as sink:
            sink.write((json.dumps(report.to_dict(), indent=2) + "\n").encode("utf-8"))
        written["report"] = Path(sink.name)
        for name, path in written.items():
            os.replace(path, report.outputs[name])
        return report
    finally:
        for path in temporaries:
            try:
                path.unlink()
            except FileNotFoundError:
                pass


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


# --------------------------------------------------------------------------- deduplicate


@dataclass
class DeduplicateReport:
    files: list[str]
    output: str
    read: int = 0
    bad: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    written: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_dedup_output(first: str | os.PathLike) -> Path:
    """``data/raw.jsonl`` -> ``data/raw.dedup.jsonl``."""
    path = Path(first)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(f"{stem}.dedup.jsonl")


def deduplicate(
    inputs: Iterable[str | os.PathLike],
    output: str | os.PathLike | None = None,
    *,
    key: str | None = None,
    skip_bad: bool = False,
    on_error: Callable[[DataError], None] | None = None,
) -> DeduplicateReport:
    """Write the first occurrence of every record, dropping exact and near duplicates.

    Records are written with all their fields, in input order, to ``output`` (default:
    ``<first input>.dedup.jsonl``) through a temporary file. Without ``skip_bad`` a bad
    line raises ``PrepareError`` after all lines were checked, and nothing is written.
    """
    files = expand_inputs(inputs)
    target = Path(output) if output is not None else default_dedup_output(files[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    report = DeduplicateReport(files=[str(p) for p in files], output=str(target))
    dedupe = Deduplicator(key)
    errors = ErrorLog(on_error)
    with atomic_file(target) as handle:
        for item in _iter_all(files):
            report.read += 1
            if isinstance(item, Record):
                try:
                    duplicate = dedupe.check(item)
                except DataError as error:
                    item = error
            if isinstance(item, DataError):
                errors.add(item)
                continue
            if duplicate == "exact":
                report.exact_duplicates += 1
            elif duplicate == "near":
                report.near_duplicates += 1
            elif skip_bad or not errors.count:
                handle.write(_json_line(item.fields))
                report.written += 1
        report.bad, report.errors = errors.count, errors.messages
        if errors.count and not skip_bad:
            raise errors.failure()  # inside the block: the temporary file is removed, the target kept
        if not report.written:
            raise _no_records(files, report.read, "write")
    return report


def format_deduplicate_report(report: DeduplicateReport) -> str:
    return "\n".join(
        [
            f"Read        {report.read} lines from {len(report.files)} file{'s' if len(report.files) != 1 else ''}",
            f"Bad         {report.bad}" + (" (skipped)" if report.bad else ""),
            f"Duplicates  {report.exact_duplicates + report.near_duplicates} "
            f"(exact {report.exact_duplicates}, near {report.near_duplicates})",
            f"Written     {report.written} -> {report.output}",
        ]
    )


# --------------------------------------------------------------------------- analyze

# ``analyze`` warns when a tier's share is further than this outside its target band
# (a prepared set sits on a band edge, and splitting moves shares by a record or two).
MIX_TOLERANCE = 0.02
WEIGHT_BINS = [round(0.1 * i, 1) for i in range(10)] + [1.0]


def _summary(values) -> dict[str, float | None]:
    import numpy as np

    if len(values) == 0:
        return {"min": None, "median": None, "mean": None, "max": None}
    data = np.asarray(values, dtype=np.float64)
    return {
        "min": float(data.min()),
        "median": float(np.median(data)),
        "mean": float(data.mean()),
        "max": float(data.max()),
    }


def _histogram(values, edges: Sequence[float]) -> list[dict[str, float | int]]:
    import numpy as np

    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(edges, dtype=np.float64))
    return [
        {"low": float(edges[i]), "high": float(edges[i + 1]), "count": int(counts[i])} for i in range(len(counts))
    ]


def analyze(
    inputs: Iterable[str | os.PathLike],
    *,
    alpha: float | None = None,
    skip_bad: bool = False,
    workers: int = 1,
    on_error: Callable[[DataError], None] | None = None,
) -> dict[str, Any]:
    """Distribution report of a data set: tiers, source types, w / H / distrust statistics.

    Records without scores are scored, in ``workers`` processes (and counted as
    ``scored_here``). Bad lines are
    passed to ``on_error``; without ``skip_bad`` they raise ``PrepareError`` at the end.
    Keeps three floats per record in memory (for medians and histograms).
    """
    from your_ai.objective.distrust import DEFAULT_ALPHA, check_alpha, empirical_distrust_loss

    alpha = check_alpha(DEFAULT_ALPHA if alpha is None else alpha)
    files = expand_inputs(inputs)
    weights, entropies, distrusts = array("d"), array("d"), array("d")
    tier_counts = [0] * len(TIERS)
    source_types: dict[str, int] = {}
    read = scored_here = outside = 0
    errors = ErrorLog(on_error)

    def good_records() -> Iterator[Record]:
        nonlocal read
        for item in _iter_all(files):
            read += 1
            if isinstance(item, DataError):
                errors.add(item)
            elif skip_bad or not errors.count:
                yield item

    for item, scores in score_records(good_records(), workers):
        if isinstance(scores, DataError):
            errors.add(scores)
            continue
        if errors.count and not skip_bad:
            continue
        weight, entropy, scored = scores
        scored_here += scored
        weights.append(weight)
        entropies.append(entropy)
        distrusts.append(empirical_distrust_loss(weight, entropy, alpha))
        tier_counts[tier_index(weight)] += 1
        outside += not in_band(weight)
        source_type = item.fields.get("source_type")
        source_type = str(source_type) if source_type is not None else "unknown"
        source_types[source_type] = source_types.get(source_type, 0) + 1
    if errors.count and not skip_bad:
        raise errors.failure("no report")
    records = len(weights)
    if not records:
        raise _no_records(files, read, "analyze")
    warnings = []
    tiers: dict[str, Any] = {}
    for tier, count in zip(TIERS, tier_counts):
        share = count / records
        tiers[tier.name] = {
            "band": [tier.low, tier.high],
            "count": count,
            "share": share,
            "target": [tier.min_share, tier.max_share],
        }
        if not tier.min_share - MIX_TOLERANCE <= share <= tier.max_share + MIX_TOLERANCE:
            direction = "below" if share < tier.min_share else "above"
            warnings.append(
                f"{tier.name} authority ({tier.low:.2f}-{tier.high:.2f}) is {100 * share:.1f}% of the records, "
                f"{direction} the target {100 * tier.min_share:.0f}-{100 * tier.max_share:.0f}%"
            )
    top_entropy = max(10, math.ceil(max(entropies)))
    return {
        "files": [str(p) for p in files],
        "read": read,
        "bad": errors.count,
        "records": records,
        "scored_here": scored_here,
        "outside_bands": outside,
        "tiers": tiers,
        "source_types": dict(sorted(source_types.items(), key=lambda kv: (-kv[1], kv[0]))),
        "auth_weight": {**_summary(weights), "histogram": _histogram(weights, WEIGHT_BINS)},
        "prov_entropy": {**_summary(entropies), "histogram": _histogram(entropies, list(range(top_entropy + 1)))},
        "distrust": {**_summary(distrusts), "alpha": alpha},
        "warnings": warnings,
        "errors": errors.messages,
        "_values": {"auth_weight": weights, "prov_entropy": entropies, "distrust": distrusts},
    }


def analysis_json(analysis: dict[str, Any]) -> str:
    """The analysis as JSON (without the raw per-record values)."""
    return json.dumps({k: v for k, v in analysis.items() if not k.startswith("_")}, indent=2)


def _bars(histogram: list[dict], width: int = 40, digits: int = 2) -> list[str]:
    top = max((row["count"] for row in histogram), default=0) or 1
    lines = []
    for row in histogram:
        label = f"{row['low']:.{digits}f}-{row['high']:.{digits}f}"
        bar = "#" * round(width * row["count"] / top)
        lines.append(f"  {label:>11} | {bar:<{width}} {row['count']}")
    return lines


def _stats(summary: dict) -> str:
    if summary["min"] is None:
        return "no values"
    return "min {min:.3f}  median {median:.3f}  mean {mean:.3f}  max {max:.3f}".format(**summary)


def format_analysis(analysis: dict[str, Any]) -> str:
    """Text report printed by ``your-ai analyze``."""
    records = analysis["records"]
    lines = [
        f"{records} records in {len(analysis['files'])} file{'s' if len(analysis['files']) != 1 else ''}"
        f" ({analysis['scored_here']} scored here"
        + (f", {analysis['bad']} bad lines skipped)" if analysis["bad"] else ")"),
        "",
        f"{'Tier':<8} {'band':>11} {'count':>9} {'share':>7} {'target':>8}",
    ]
    for name, tier in analysis["tiers"].items():
        band = f"{tier['band'][0]:.2f}-{tier['band'][1]:.2f}"
        target = f"{100 * tier['target'][0]:.0f}-{100 * tier['target'][1]:.0f}%"
        lines.append(f"{name:<8} {band:>11} {tier['count']:>9} {100 * tier['share']:>6.1f}% {target:>8}")
    lines.append(f"({analysis['outside_bands']} records lie outside every band and count in the nearest tier)")
    lines += ["", "Source types:"]
    lines += [f"  {name:<20} {count}" for name, count in analysis["source_types"].items()]
    lines += ["", f"Authority weight: {_stats(analysis['auth_weight'])}"]
    lines += _bars(analysis["auth_weight"]["histogram"])
    lines += ["", f"Provenance entropy (bits): {_stats(analysis['prov_entropy'])}"]
    lines += _bars(analysis["prov_entropy"]["histogram"], digits=0)
    lines += ["", f"Distrust (alpha {analysis['distrust']['alpha']}): {_stats(analysis['distrust'])}"]
    if analysis["warnings"]:
        lines += [""] + [f"Warning: {warning}" for warning in analysis["warnings"]]
    return "\n".join(lines)


def plot_analysis(analysis: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG with histograms of w, H and distrust and the tier shares against the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = analysis["_values"]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    axes[0][0].hist(values["auth_weight"], bins=WEIGHT_BINS, color="#4c72b0")
    axes[0][0].set(title="Authority weight w", xlabel="w", ylabel="records")
    entropy_edges = [row["low"] for row in analysis["prov_entropy"]["histogram"]] + [
        analysis["prov_entropy"]["histogram"][-1]["high"]
    ]
    axes[0][1].hist(values["prov_entropy"], bins=entropy_edges, color="#55a868")
    axes[0][1].set(title="Provenance entropy H", xlabel="bits", ylabel="records")
    axes[1][0].hist(values["distrust"], bins=30, color="#c44e52")
    axes[1][0].set(title=f"Distrust d (alpha {analysis['distrust']['alpha']})", xlabel="d", ylabel="records")
    names = list(analysis["tiers"])
    shares = [100 * analysis["tiers"][n]["share"] for n in names]
    axes[1][1].bar(names, shares, color="#8172b2", label="share")
    for i, name in enumerate(names):
        low, high = analysis["tiers"][name]["target"]
        axes[1][1].plot([i - 0.4, i + 0.4], [100 * low] * 2, "k--", linewidth=1)
        axes[1][1].plot([i - 0.4, i + 0.4], [100 * high] * 2, "k--", linewidth=1)
    axes[1][1].set(title="Tier shares (dashed: target band)", ylabel="% of records")
    figure.suptitle(f"{analysis['records']} records")
    figure.tight_layout()
    return save_figure_atomic(figure, path)

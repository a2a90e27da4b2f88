"""Exact and near duplicates: the forms texts are compared in, the hash index that remembers them,
and ``deduplicate``, which writes the first occurrence of every record.

Exact duplicates: the same ``--key`` field value when a key is given, else the same text after
line endings are unified and outer whitespace removed. Near duplicates: the same text after NFKC
normalisation, case folding, punctuation removal and whitespace collapsing. Only 64-bit hashes of
these forms are kept in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from your_ai.data.inputs import (
    ErrorLog,
    expand_inputs,
    iter_inputs,
    json_line,
    no_records_left,
)
from your_ai.data.records import DataError, Record
from your_ai.files import atomic_file

_PUNCTUATION = re.compile(r"[^\w\s]|_")
_WHITESPACE = re.compile(r"\s+")
_SLICE = 1 << 16  # characters


def exact_form(text: str) -> str:
    """Text as compared for exact duplicates: line endings unified, outer whitespace removed."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def near_form(text: str) -> str:
    """Text as compared for near duplicates: NFKC, case-folded, punctuation removed,
    whitespace runs collapsed to one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    pieces: list[str] = []
    # a slice at a time: a regular expression's substitution (or split) holds an object per match, which for a
    # long record is many times the text; a whitespace run across two slices still becomes one space
    for start in range(0, len(text), _SLICE):
        piece = _WHITESPACE.sub(" ", _PUNCTUATION.sub("", text[start:start + _SLICE]))
        if pieces and pieces[-1].endswith(" ") and piece.startswith(" "):
            piece = piece[1:]
        if piece:
            pieces.append(piece)
    return "".join(pieces).strip()


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


class DuplicateCounts(Protocol):
    """Where ``first_occurrences`` counts what it reads: the report of a run."""

    read: int
    exact_duplicates: int
    near_duplicates: int


PROGRESS_EVERY = 10_000


def first_occurrences(files: Sequence[Path], dedupe: Deduplicator, errors: ErrorLog, counts: DuplicateCounts,
                      on_progress: Callable[[int], None] | None = None) -> Iterator[Record]:
    """Checked records of ``files`` seen for the first time, in input order. Lines read and duplicates
    are counted in ``counts``, bad lines passed to ``errors``, and ``on_progress`` gets the number of
    lines read every ``PROGRESS_EVERY`` lines. Once ``errors`` is failing, the rest is only
    checked."""
    for item in iter_inputs(files):
        counts.read += 1
        if on_progress is not None and counts.read % PROGRESS_EVERY == 0:
            on_progress(counts.read)
        if isinstance(item, Record):
            try:
                duplicate = dedupe.check(item)
            except DataError as error:
                item = error
        if isinstance(item, DataError):
            errors.add(item)
        elif errors.failing:
            continue
        elif duplicate == "exact":
            counts.exact_duplicates += 1
        elif duplicate == "near":
            counts.near_duplicates += 1
        else:
            yield item


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
    errors = ErrorLog(on_error, skip_bad)
    with atomic_file(target) as handle:
        for record in first_occurrences(files, Deduplicator(key), errors, report):
            handle.write(json_line(record.fields))
            report.written += 1
        report.bad, report.errors = errors.count, errors.messages
        if errors.failing:
            raise errors.failure()  # inside the block: the temporary file is removed, the target kept
        if not report.written:
            raise no_records_left(files, report.read, "write")
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

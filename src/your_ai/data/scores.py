"""The scores of records: the ``auth_weight``/``prov_entropy`` a record carries, else those the scorer
(``your_ai.objective.scoring``) computes from its text and metadata.

``score_records`` is the one place that decides between the two (in several processes for large
data sets; ``your_ai.data.score_cache`` gives training its arrays), ``score_file`` scores every record of a file
for ``your-ai score --file`` (beside the values it carries, if any).
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from your_ai.data.records import DataError, Record, iter_records, no_records
from your_ai.data.workers import ordered_map
from your_ai.objective.distrust import DEFAULT_ALPHA, empirical_distrust_loss
from your_ai.objective.scoring import DocumentScore, score_document

Scores = tuple[float, float, bool]  # (auth_weight, prov_entropy, scored_here)
SCORE_CHUNK = 256


def _score_texts(documents: list[tuple[str, dict]]) -> list[tuple[float, float] | str]:
    """Score ``(text, metadata)`` pairs: ``(w, H)`` each, or the scorer's error message."""
    results: list[tuple[float, float] | str] = []
    for text, metadata in documents:
        try:
            score = score_document(text, metadata)
        except ValueError as error:
            results.append(str(error))
        else:
            results.append((score.authority_weight, score.provenance_entropy))
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
    ``SCORE_CHUNK`` records, one in flight per process, so memory stays flat). A record
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

    window: deque = deque()  # the chunks sent, in order, each until its results come back

    def sent() -> Iterator[list[tuple[str, dict]]]:
        for chunk in itertools.chain(head, pending):
            window.append(chunk)
            yield unscored(chunk)

    for results in ordered_map(_score_texts, sent(), workers):
        yield from merge(window.popleft(), results)


@dataclass(frozen=True)
class ScoredRecord:
    """A JSONL record, its computed score, and the scores it already carried (if any)."""

    record: Record
    score: DocumentScore

    @property
    def carried(self) -> dict[str, float] | None:
        if not self.record.has_scores:
            return None
        w, h = float(self.record.auth_weight), float(self.record.prov_entropy)
        alpha = self.score.breakdown["distrust"]["alpha"]
        return {"auth_weight": w, "prov_entropy": h, "distrust": float(empirical_distrust_loss(w, h, alpha))}

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.record.line, **self.score.to_dict(), "carried": self.carried}


def score_file(path: str | Path, *, alpha: float = DEFAULT_ALPHA) -> tuple[list[ScoredRecord], list[DataError]]:
    """Score every record of a JSONL file. Returns the scored records and every bad line
    (``file:line: reason``); a file with any bad line should be treated as not scored."""
    scored: list[ScoredRecord] = []
    errors: list[DataError] = []
    try:
        for item in iter_records(path):
            if isinstance(item, DataError):
                errors.append(item)
                continue
            try:
                score = score_document(item.document_text(), item.metadata, alpha=alpha)
            except ValueError as error:
                errors.append(DataError(path, item.line, str(error)))
                continue
            scored.append(ScoredRecord(record=item, score=score))
    except DataError as error:  # the file itself cannot be read
        errors.append(error)
    if not scored and not errors:
        errors.append(no_records(path))
    return scored, errors

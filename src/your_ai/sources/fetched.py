"""What every fetcher yields, and the record form they share: ``text``, the source's priors (``auth_weight``,
``prov_entropy``) and the provenance fields the scorer and ``prepare`` read (``year``, ``source``,
``source_type``, ``url``, ``publisher``, ``identifier``), plus ``title`` and ``date`` where the source gives them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from your_ai.sources.table import Source

MAX_TEXT_CHARS = 50_000  # a longer text (a whole book) is cut at a paragraph or word end before this
MIN_TEXT_CHARS = 200  # shorter OCR texts (blank pages, covers) are skipped
_YEAR = re.compile(r"(?<!\d)(1[0-9]{3}|20[0-9]{2})(?!\d)")


@dataclass
class Fetched:
    """One step of a fetcher: a ``record``, or the reason the item was ``skipped``; ``cursor`` resumes after it."""

    cursor: dict[str, Any]
    record: dict[str, Any] | None = None
    skipped: str | None = None


def make_record(source: Source, text: str, **provenance: Any) -> dict[str, Any]:
    """A record of ``source``: its text, priors and the provenance given (empty values left out)."""
    record: dict[str, Any] = {
        "text": text, "auth_weight": source.auth_weight, "prov_entropy": source.prov_entropy,
        "source": source.name, "source_type": source.source_type,
    }
    if source.publisher:
        record["publisher"] = source.publisher
    for key, value in provenance.items():
        if isinstance(value, (list, tuple)):
            value = "; ".join(str(part) for part in value if part)
        if value is None or value == "":
            continue
        record[key] = value if key == "year" else str(value)
    return record


def year_of(*values: Any) -> int | None:
    """The first plausible year (1000-2099) in ``values`` (strings such as "1871", "[c1871]", "18710105")."""
    for value in values:
        if isinstance(value, int) and 1000 <= value <= 2099:
            return value
        if isinstance(value, str):
            match = _YEAR.search(value) or re.match(r"(1[0-9]{3}|20[0-9]{2})[01][0-9][0-3][0-9]$", value)
            if match:
                return int(match.group(1))
    return None


def clip_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` without outer whitespace and, beyond ``limit`` characters, cut at the last paragraph end (or word
    end) before it."""
    text = text.replace("\r\n", "\n").strip()
    if len(text) <= limit:
        return text
    head = text[:limit]
    for mark in ("\n\n", "\n", " "):
        cut = head.rfind(mark)
        if cut > limit // 2:
            return head[:cut].rstrip()
    return head

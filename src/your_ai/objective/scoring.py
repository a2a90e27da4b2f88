"""Score a document's text and metadata: authority weight ``w`` and provenance entropy ``H``.

The two numbers the Empirical Distrust objective needs (see ``your_ai.objective.distrust``) are
computed here when the data does not carry them. Every rule is a plain sum of named
components, and every component that contributed is reported in ``DocumentScore.breakdown``.

Era
---
The era comes from the ``year`` metadata (an int or a string of digits). Without it, the
year is inferred from the text: the latest 4-digit year in 1500-2099 that is not after the
current calendar year (a document cannot be older than the latest year it names). With no
year at all, the document is treated as modern (post-1995). The breakdown says which.
Eras: pre-1970 (year < 1970), 1970-1995 (1970 <= year <= 1995), post-1995 (year > 1995).

Authority weight (clamped to [0, 0.99])
---------------------------------------
    age            pre-1970 0.0, 1970-1995 0.1, post-1995 0.3
    institutional  sum of the scores of the distinct ``INSTITUTIONAL_MARKERS`` found in the
                   text or in the source / url / publisher / identifier metadata, capped at 0.35
    citations      0.05 * log2(1 + n) for n citation markers ([1], (Author, 2020),
                   et al., ibid, op. cit.), capped at 0.25 (reached at 31 markers)
    source type    from the ``source_type`` metadata: official +0.2, patent -0.15,
                   lab notebook -0.15, blog +0.05, anything else 0
    primary        -0.15 per distinct ``PRIMARY_SOURCE_MARKERS`` entry found, at most 3
    consensus      +0.10 per distinct ``CONSENSUS_PHRASES`` entry found, at most 2

Provenance entropy (bits, clamped to >= 0)
------------------------------------------
    base           pre-1970 5.5, 1970-1995 3.5, post-1995 1.5
    uneditable     +0.5 per distinct ``UNEDITABLE_MARKERS`` entry found
    scan           +1.0 if any ``SCAN_MARKERS`` entry is found (scan, facsimile, photostat)
    source types   +0.3 per distinct source type in the evidence chain (below)
    pre-1970       +0.3 per distinct ``PRE_1970_INDICATORS`` entry found, a year before
                   1970 named in the text counting as one indicator
    institutional  -0.5 per distinct institutional marker (as found for the authority)
    consensus      -0.4 per distinct consensus phrase (no cap)
    shannon        + the Shannon entropy, in bits, of the distribution of source types in
                   the evidence chain: H = -sum(p_i * log2(p_i)), p_i = n_i / sum(n)

The evidence chain is every match of ``EVIDENCE_SOURCE_TYPES`` in the text (each match
counts once toward its type's n_i) plus one entry for the ``source_type`` metadata. The
Shannon term is added to the heuristic sum before the clamp: a document whose evidence is
spread evenly over k kinds of source gains log2(k) bits on top of the +0.3 per kind, and one
that rests on a single kind gains nothing.

The numbers and marker lists are in ``your_ai.objective.scoring_rules``. All marker lists are matched with word boundaries; acronyms (WHO, CDC, ...) are matched
case-sensitively, everything else case-insensitively. Primary, uneditable, scan, consensus
and citation markers are looked for in the text only. ``w`` and ``H`` are rounded to 6
decimal places. ``distrust`` is ``empirical_distrust_loss(w, H, alpha)`` (alpha 2.7).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from your_ai.objective.distrust import (
    AUTHORITY_MAX,
    AUTHORITY_MIN,
    DEFAULT_ALPHA,
    empirical_distrust_loss,
)
from your_ai.objective.scoring_patterns import (
    Pattern,
    compile_pattern,
    compile_patterns,
    folded,
)
from your_ai.objective.scoring_rules import (
    AGE_AUTHORITY,
    AGE_BASE_ENTROPY,
    CITATION_CAP,
    CITATION_PATTERNS,
    CITATION_SCALE,
    CONSENSUS_MAX,
    CONSENSUS_PENALTY,
    CONSENSUS_PHRASES,
    CONSENSUS_SCORE,
    DECIMALS,
    EVIDENCE_SOURCE_TYPES,
    INSTITUTIONAL_CAP,
    INSTITUTIONAL_MARKERS,
    INSTITUTIONAL_METADATA_FIELDS,
    INSTITUTIONAL_PENALTY,
    METADATA_FIELDS,
    MID_ERA,
    MODERN,
    PRE_1970,
    PRE_1970_BONUS,
    PRE_1970_INDICATORS,
    PRE_1970_YEAR_INDICATOR,
    PRIMARY_MARKER_MAX,
    PRIMARY_MARKER_SCORE,
    PRIMARY_SOURCE_MARKERS,
    SCAN_BONUS,
    SCAN_MARKERS,
    SOURCE_TYPE_ALIASES,
    SOURCE_TYPE_AUTHORITY,
    SOURCE_TYPE_BONUS,
    UNEDITABLE_BONUS,
    UNEDITABLE_MARKERS,
    YEAR_IN_TEXT,
)


def _phrase_pattern(phrase: str) -> str:
    words = re.split(r"[\s-]+", phrase)
    return r"\b" + r"[\s-]+".join(re.escape(word) for word in words) + r"\b"


_INSTITUTIONAL = {name: (compile_pattern(pattern, 0), score) for name, (pattern, score) in INSTITUTIONAL_MARKERS.items()}
_CITATIONS = compile_patterns(CITATION_PATTERNS)
_CITATIONS["author_year"] = compile_pattern(CITATION_PATTERNS["author_year"], 0)  # capital initial matters
_PRIMARY = compile_patterns(PRIMARY_SOURCE_MARKERS)
_CONSENSUS = compile_patterns({phrase: _phrase_pattern(phrase) for phrase in CONSENSUS_PHRASES})
_UNEDITABLE = compile_patterns(UNEDITABLE_MARKERS)
_SCAN = compile_patterns(SCAN_MARKERS)
_EVIDENCE = compile_patterns(EVIDENCE_SOURCE_TYPES)
_PRE_1970 = compile_patterns(PRE_1970_INDICATORS)
_YEAR = re.compile(YEAR_IN_TEXT)


@dataclass(frozen=True)
class _Text:
    """A document's text, its folded form (where the patterns' needles are looked for) and the
    years it names: what every rule reads, computed once."""

    text: str
    folded: str
    years: list[str]

    @classmethod
    def of(cls, text: str) -> _Text:
        return cls(text, folded(text), _YEAR.findall(text))


# ------------------------------------------------------------------------------ result


@dataclass(frozen=True)
class DocumentScore:
    """``w``, ``H``, the distrust value they give, and every component behind them."""

    authority_weight: float
    provenance_entropy: float
    distrust: float
    breakdown: dict[str, Any] = field(compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "auth_weight": self.authority_weight,
            "prov_entropy": self.provenance_entropy,
            "distrust": self.distrust,
            "breakdown": self.breakdown,
        }


# ------------------------------------------------------------------------------ scoring


def score_document(text: str, metadata: Mapping[str, Any] | None = None, *, alpha: float = DEFAULT_ALPHA) -> DocumentScore:
    """Score one document. ``metadata`` may hold year, source, url, publisher, source_type,
    identifier (other keys are ignored); a bad value raises ``ValueError`` naming it."""
    if not isinstance(text, str):
        raise ValueError(f"text={text!r} is not a string")
    meta = _check_metadata(metadata or {})
    document = _Text.of(text)
    year = _year(document, meta)
    institutional = _institutional_markers(document, meta)
    consensus = _found(_CONSENSUS, document)
    authority = _authority(document, meta, year["era"], institutional, consensus)
    entropy = _entropy(document, year["era"], authority["source_type"]["type"], institutional, consensus)
    w, h = authority["value"], entropy["value"]
    distrust = float(empirical_distrust_loss(w, h, alpha))
    breakdown = {
        "year": year,
        "authority": authority,
        "entropy": entropy,
        "distrust": {"alpha": float(alpha), "value": distrust},
    }
    return DocumentScore(authority_weight=w, provenance_entropy=h, distrust=distrust, breakdown=breakdown)


def _authority(document: _Text, meta: dict[str, Any], era: str, institutional: dict[str, dict[str, Any]],
               consensus: list[str]) -> dict[str, Any]:
    """The authority weight's components, their raw sum and the clamped ``value``."""
    citations = _citations(document)
    source_type = _source_type(meta.get("source_type"))
    primary = _found(_PRIMARY, document)
    institutional_sum = sum(entry["score"] for entry in institutional.values())
    authority = {
        "age": AGE_AUTHORITY[era],
        "institutional": {
            "markers": institutional,
            "sum": _round(institutional_sum),
            "cap": INSTITUTIONAL_CAP,
            "score": _round(min(INSTITUTIONAL_CAP, institutional_sum)),
        },
        "citations": citations,
        "source_type": {
            "given": source_type["given"],
            "type": source_type["type"],
            "score": SOURCE_TYPE_AUTHORITY.get(source_type["type"], 0.0),
        },
        "primary_markers": {
            "found": primary,
            "counted": min(len(primary), PRIMARY_MARKER_MAX),
            "score": _round(PRIMARY_MARKER_SCORE * min(len(primary), PRIMARY_MARKER_MAX)),
        },
        "consensus_phrases": {
            "found": consensus,
            "counted": min(len(consensus), CONSENSUS_MAX),
            "score": _round(CONSENSUS_SCORE * min(len(consensus), CONSENSUS_MAX)),
        },
    }
    authority_raw = _round(
        authority["age"]
        + authority["institutional"]["score"]
        + citations["score"]
        + authority["source_type"]["score"]
        + authority["primary_markers"]["score"]
        + authority["consensus_phrases"]["score"]
    )
    authority["raw"] = authority_raw
    authority["value"] = min(AUTHORITY_MAX, max(AUTHORITY_MIN, authority_raw))
    return authority


def _entropy(document: _Text, era: str, source_type: str | None, institutional: dict[str, dict[str, Any]],
             consensus: list[str]) -> dict[str, Any]:
    """The provenance entropy's components, their raw sum and the clamped ``value``."""
    uneditable = _found(_UNEDITABLE, document)
    scans = _found(_SCAN, document)
    evidence = _evidence_chain(document, source_type)
    pre_1970 = _pre_1970_indicators(document)
    shannon = _round(shannon_entropy(evidence.values()))
    entropy = {
        "base": AGE_BASE_ENTROPY[era],
        "uneditable": {"found": uneditable, "score": _round(UNEDITABLE_BONUS * len(uneditable))},
        "scan": {"found": scans, "score": SCAN_BONUS if scans else 0.0},
        "source_types": {
            "counts": evidence,
            "distinct": len(evidence),
            "score": _round(SOURCE_TYPE_BONUS * len(evidence)),
        },
        "pre_1970": {"found": pre_1970, "score": _round(PRE_1970_BONUS * len(pre_1970))},
        "institutional_penalty": {
            "count": len(institutional),
            "score": _round(INSTITUTIONAL_PENALTY * len(institutional)),
        },
        "consensus_penalty": {"count": len(consensus), "score": _round(CONSENSUS_PENALTY * len(consensus))},
        "shannon": shannon,
    }
    entropy_raw = _round(
        entropy["base"]
        + entropy["uneditable"]["score"]
        + entropy["scan"]["score"]
        + entropy["source_types"]["score"]
        + entropy["pre_1970"]["score"]
        + entropy["institutional_penalty"]["score"]
        + entropy["consensus_penalty"]["score"]
        + shannon
    )
    entropy["raw"] = entropy_raw
    entropy["value"] = max(0.0, entropy_raw)
    return entropy


def score_documents(
    documents: Iterable[tuple[str, Mapping[str, Any] | None]], *, alpha: float = DEFAULT_ALPHA
) -> list[DocumentScore]:
    """Score ``(text, metadata)`` pairs, in order."""
    return [score_document(text, metadata, alpha=alpha) for text, metadata in documents]


def shannon_entropy(counts: Iterable[int]) -> float:
    """``-sum(p * log2(p))`` in bits over the distribution given by ``counts`` (0 if empty)."""
    counts = [count for count in counts if count > 0]
    total = sum(counts)
    if total == 0:
        return 0.0
    return max(0.0, -sum((count / total) * math.log2(count / total) for count in counts))


def era_of(year: int) -> str:
    """``pre-1970``, ``1970-1995`` or ``post-1995``."""
    if year < 1970:
        return PRE_1970
    if year <= 1995:
        return MID_ERA
    return MODERN


# ------------------------------------------------------------------------------ components


def _check_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata={metadata!r} is not a mapping")
    meta: dict[str, Any] = {}
    for key in METADATA_FIELDS:
        value = metadata.get(key)
        if value is None:
            continue
        if key == "year":
            if isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
            ):
                raise ValueError(f"year={value!r} is not a whole number")
            meta[key] = int(value)
        elif not isinstance(value, str):
            raise ValueError(f"{key}={value!r} is not a string")
        elif value.strip():
            meta[key] = value.strip()
    return meta


def _year(document: _Text, meta: dict[str, Any]) -> dict[str, Any]:
    if "year" in meta:
        year = meta["year"]
        return {"value": year, "from": "metadata", "era": era_of(year)}
    this_year = datetime.date.today().year
    found = sorted({int(match) for match in document.years})
    usable = [year for year in found if year <= this_year]
    if usable:
        year = usable[-1]
        return {
            "value": year,
            "from": "text",
            "era": era_of(year),
            "note": f"no year given; inferred {year} from the text (latest year it names)",
        }
    return {"value": None, "from": "none", "era": MODERN, "note": "no year given or found in the text; treated as post-1995"}


def _found(patterns: Mapping[str, Pattern], document: _Text) -> list[str]:
    return [name for name, pattern in patterns.items() if pattern.search(document.text, document.folded)]


def _institutional_markers(document: _Text, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    places = [("text", document.text, document.folded)] + [
        (key, meta[key], folded(meta[key])) for key in INSTITUTIONAL_METADATA_FIELDS if key in meta
    ]
    markers: dict[str, dict[str, Any]] = {}
    for name, (pattern, score) in _INSTITUTIONAL.items():
        where = [place for place, value, value_folded in places if pattern.search(value, value_folded)]
        if where:
            markers[name] = {"score": score, "found_in": where}
    return markers


def _citations(document: _Text) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    remaining, remaining_folded = document.text, document.folded
    for kind, pattern in _CITATIONS.items():
        kinds[kind] = len(pattern.findall(remaining, remaining_folded))
        if kind == "author_year" and kinds[kind]:
            remaining = pattern.regex.sub(" ", remaining)
            remaining_folded = folded(remaining)
    count = sum(kinds.values())
    score = _round(min(CITATION_CAP, CITATION_SCALE * math.log2(1 + count)))
    return {"count": count, "kinds": kinds, "cap": CITATION_CAP, "score": score}


def canonical_source_type(value: str | None) -> str | None:
    """The source type a ``source_type`` value stands for (unknown values kept, normalised)."""
    if value is None:
        return None
    key = re.sub(r"[\s-]+", "_", value.strip().lower())
    return SOURCE_TYPE_ALIASES.get(key, key)


def _source_type(value: str | None) -> dict[str, Any]:
    return {"given": value, "type": canonical_source_type(value)}


def _evidence_chain(document: _Text, source_type: str | None) -> dict[str, int]:
    counts = {name: len(pattern.findall(document.text, document.folded)) for name, pattern in _EVIDENCE.items()}
    if source_type:
        counts[source_type] = counts.get(source_type, 0) + 1
    return {name: count for name, count in counts.items() if count}


def _pre_1970_indicators(document: _Text) -> list[str]:
    found = _found(_PRE_1970, document)
    if any(int(year) < 1970 for year in document.years):
        found.insert(0, PRE_1970_YEAR_INDICATOR)
    return found


def _round(value: float) -> float:
    return round(value, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0

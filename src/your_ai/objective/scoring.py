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

All marker lists are matched with word boundaries; acronyms (WHO, CDC, ...) are matched
case-sensitively, everything else case-insensitively. Primary, uneditable, scan, consensus
and citation markers are looked for in the text only. ``w`` and ``H`` are rounded to 6
decimal places. ``distrust`` is ``empirical_distrust_loss(w, H, alpha)`` (alpha 2.7).
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from your_ai.data.records import METADATA_FIELDS, DataError, Record, iter_records, no_records
from your_ai.objective.distrust import AUTHORITY_MAX, AUTHORITY_MIN, DEFAULT_ALPHA, empirical_distrust_loss

# ------------------------------------------------------------------------------ era

PRE_1970, MID_ERA, MODERN = "pre-1970", "1970-1995", "post-1995"
AGE_AUTHORITY = {PRE_1970: 0.0, MID_ERA: 0.1, MODERN: 0.3}
AGE_BASE_ENTROPY = {PRE_1970: 5.5, MID_ERA: 3.5, MODERN: 1.5}
YEAR_IN_TEXT = r"(?<![\d.,])(1[5-9]\d{2}|20\d{2})(?!\d|[.,]\d)"

# ------------------------------------------------------------------------------ authority

# name -> (regular expression, authority score). Matched case-sensitively; the patterns
# carry (?i:...) where case does not matter.
INSTITUTIONAL_MARKERS: dict[str, tuple[str, float]] = {
    "WHO": (r"\bWHO\b|\bWorld Health Organi[sz]ation\b|\bwho\.int\b", 0.30),
    "CDC": (r"\bCDC\b|\bCenters for Disease Control\b|\bcdc\.gov\b", 0.30),
    "FDA": (r"\bFDA\b|\bFood and Drug Administration\b|\bfda\.gov\b", 0.30),
    "NIH": (r"\bNIH\b|\bNational Institutes of Health\b|\bnih\.gov\b", 0.30),
    ".gov": (r"(?i:\.gov)\b", 0.25),
    "government": (r"(?i:\bgovernment\b)", 0.20),
    "official": (r"(?i:\bofficial(?:ly)?\b)", 0.15),
    "press release": (r"(?i:\bpress[\s-]+release\b)", 0.15),
    "Nature": (r"\b(?:(?i:journal)|in) Nature\b|\bNature (?:Medicine|Genetics|Physics|Communications)\b|(?i:\bnature\.com\b)", 0.30),
    "Science": (r"\b(?:(?i:journal)|in) Science\b(?! of)|(?i:\bscience\.org\b)", 0.30),
    "Lancet": (r"\b(?:The )?Lancet\b|(?i:\bthelancet\.com\b)", 0.30),
    "NEJM": (r"\bNEJM\b|\bNew England Journal of Medicine\b|(?i:\bnejm\.org\b)", 0.30),
    "JAMA": (r"\bJAMA\b|(?i:\bjamanetwork\.com\b)", 0.30),
    "peer-reviewed": (r"(?i:\bpeer[\s-]+review(?:ed)?\b)", 0.15),
    "university": (r"(?i:\buniversit(?:y|ies)\b|\.edu\b)", 0.15),
    "Wikipedia": (r"(?i:\bwikipedia\b)", 0.20),
    "encyclopedia": (r"(?i:\bencyclop(?:a?e|æ)dia\b)", 0.15),
    "news": (r"(?i:\bnews(?:paper)?\b|\breuters\b|\bassociated press\b)", 0.10),
    "blog": (r"(?i:\bblog(?:s|ged|post)?\b)", 0.05),
}
INSTITUTIONAL_CAP = 0.35
INSTITUTIONAL_METADATA_FIELDS = ("source", "url", "publisher", "identifier")

# kind -> regular expression (case-insensitive). Author-year matches are removed before
# "et al." is counted, so "(Smith et al., 2020)" is one citation, not two.
CITATION_PATTERNS: dict[str, str] = {
    "numbered": r"\[\d+(?:\s*[,\u2013-]\s*\d+)*\]",
    "author_year": r"\([A-Z][\w'\u2019-]+(?:\s+et\s+al\.?|\s+(?:and|&)\s+[A-Z][\w'\u2019-]+)?,?\s+(?:1[5-9]|20)\d{2}[a-z]?\)",
    "et_al": r"\bet\s+al\b\.?",
    "ibid": r"\bibid\b\.?|\bop\.\s*cit\b\.?",
}
CITATION_SCALE = 0.05  # per doubling of (1 + count)
CITATION_CAP = 0.25

# canonical source type -> authority adjustment (types not listed add 0)
SOURCE_TYPE_AUTHORITY: dict[str, float] = {
    "official": 0.20,
    "patent": -0.15,
    "lab_notebook": -0.15,
    "blog": 0.05,
}
# source_type metadata (lower case, spaces and hyphens as "_") -> canonical source type
SOURCE_TYPE_ALIASES: dict[str, str] = {
    "official": "official",
    "government": "official",
    "government_report": "official",
    "official_statement": "official",
    "press_release": "official",
    "guideline": "official",
    "guidelines": "official",
    "patent": "patent",
    "lab_notebook": "lab_notebook",
    "laboratory_notebook": "lab_notebook",
    "notebook": "lab_notebook",
    "logbook": "lab_notebook",
    "measurement_log": "lab_notebook",
    "blog": "blog",
    "blog_post": "blog",
    "encyclopedia": "encyclopedia",
    "wiki": "encyclopedia",
    "wikipedia": "encyclopedia",
    "news": "news",
    "newspaper": "news",
    "academic_paper": "academic_paper",
    "paper": "academic_paper",
    "journal_article": "academic_paper",
    "preprint": "academic_paper",
    "textbook": "textbook",
    "letter": "correspondence",
    "diary": "correspondence",
    "correspondence": "correspondence",
    "oral_history": "oral_history",
    "interview": "oral_history",
    "archive": "archive",
    "manuscript": "archive",
    "photograph": "photograph",
    "measurement": "measurement",
}

# name -> regular expression (case-insensitive)
PRIMARY_SOURCE_MARKERS: dict[str, str] = {
    "patent": r"\bpatent(?:s|ed)?\b",
    "lab notebook": r"\blab(?:oratory)?\s+note[\s-]?books?\b",
    "measurement": r"\bmeasure(?:d|ment|ments)\b",
    "experiment": r"\bexperiment(?:s|al|ed)?\b",
    "archive": r"\barchiv(?:e|es|ed|al)\b",
    "manuscript": r"\bmanuscripts?\b",
    "letter": r"\bletters?\b",
    "diary": r"\bdiar(?:y|ies)\b",
    "oral history": r"\boral\s+histor(?:y|ies)\b",
    "photograph": r"\bphotograph(?:s|ed)?\b",
    "scan": r"\bscan(?:s|ned)?\b",
    "field notes": r"\bfield\s+notes\b",
    "logbook": r"\blog[\s-]?books?\b",
    "eyewitness": r"\beye[\s-]?witness(?:es)?\b",
    "specimen": r"\bspecimens?\b",
}
PRIMARY_MARKER_SCORE = -0.15
PRIMARY_MARKER_MAX = 3

CONSENSUS_PHRASES: tuple[str, ...] = (
    "widely accepted",
    "generally accepted",
    "experts agree",
    "scientists agree",
    "scientific consensus",
    "broad consensus",
    "settled science",
    "the science is settled",
    "studies show",
    "research shows",
    "overwhelming evidence",
    "well-established",
    "according to experts",
    "it is well known",
    "mainstream view",
)
CONSENSUS_SCORE = 0.10
CONSENSUS_MAX = 2

# ------------------------------------------------------------------------------ entropy

# Records that cannot be edited after the fact. name -> regular expression (case-insensitive)
UNEDITABLE_MARKERS: dict[str, str] = {
    "patent": r"\bpatent(?:s|ed)?\b",
    "lab notebook": r"\blab(?:oratory)?\s+note[\s-]?books?\b",
    "logbook": r"\blog[\s-]?books?\b",
    "ledger": r"\bledgers?\b",
    "handwritten": r"\bhand[\s-]?written\b",
    "typewritten": r"\btype[\s-]?written\b",
    "signed": r"\bsigned\b",
    "witnessed": r"\bwitnessed\b",
    "notarized": r"\bnotari[sz]ed\b",
    "original": r"\boriginal\s+(?:page|pages|document|documents|copy|record|records|print|plate|negative)\b",
    "manuscript": r"\bmanuscripts?\b",
    "photograph": r"\bphotograph(?:s|ed)?\b",
    "microfilm": r"\bmicrofilm(?:ed)?\b",
    "carbon copy": r"\bcarbon\s+cop(?:y|ies)\b",
    "specimen": r"\bspecimens?\b",
}
UNEDITABLE_BONUS = 0.5

SCAN_MARKERS: dict[str, str] = {
    "scan": r"\bscan(?:s|ned)?\b",
    "facsimile": r"\bfacsimiles?\b",
    "photostat": r"\bphotostat(?:s|ic)?\b",
}
SCAN_BONUS = 1.0

# Kinds of source in the evidence chain. type -> regular expression (case-insensitive);
# every match counts once toward its type.
EVIDENCE_SOURCE_TYPES: dict[str, str] = {
    "patent": r"\bpatent(?:s|ed)?\b",
    "lab_notebook": r"\blab(?:oratory)?\s+note[\s-]?books?\b|\blog[\s-]?books?\b|\bexperiment(?:s|al|ed)?\b",
    "measurement": r"\bmeasure(?:d|ment|ments)\b|\breadings?\b|\bobserv(?:ed|ation|ations)\b",
    "archive": r"\barchiv(?:e|es|ed|al)\b|\bmanuscripts?\b",
    "correspondence": r"\bletters?\b|\bdiar(?:y|ies)\b|\bcorrespondence\b|\btelegrams?\b",
    "oral_history": r"\boral\s+histor(?:y|ies)\b|\binterview(?:s|ed)?\b|\beye[\s-]?witness(?:es)?\b|\btestimony\b",
    "photograph": r"\bphotograph(?:s|ed)?\b",
    "academic_paper": r"\bpeer[\s-]+review(?:ed)?\b|\bjournal\s+articles?\b|\babstract:|\breferences:",
    "textbook": r"\btextbooks?\b",
    "news": r"\bnews(?:paper)?s?\b|\breporters?\b|\bjournalists?\b",
    "encyclopedia": r"\bencyclop(?:a?e|æ)dias?\b|\bwikipedia\b",
    "official": r"\bpress[\s-]+releases?\b|\bgovernment\b|\bofficial\s+statement\b|\bguidelines?\b|\bministry\b",
    "blog": r"\bblog(?:s|ged|post)?\b|\bposted\s+by\b",
}
SOURCE_TYPE_BONUS = 0.3

PRE_1970_YEAR_INDICATOR = "year before 1970"
PRE_1970_INDICATORS: dict[str, str] = {
    "typewritten": r"\btype[\s-]?written\b",
    "mimeograph": r"\bmimeograph(?:s|ed)?\b",
    "telegram": r"\btelegrams?\b",
    "carbon copy": r"\bcarbon\s+cop(?:y|ies)\b",
    "microfilm": r"\bmicrofilm(?:ed)?\b",
    "slide rule": r"\bslide\s+rules?\b",
    "vacuum tube": r"\bvacuum\s+tubes?\b",
    "punched card": r"\bpunch(?:ed)?\s+cards?\b",
    "daguerreotype": r"\bdaguerreotypes?\b",
}
PRE_1970_BONUS = 0.3

INSTITUTIONAL_PENALTY = -0.5
CONSENSUS_PENALTY = -0.4

DECIMALS = 6


def _compile(patterns: Mapping[str, str], flags: int = re.IGNORECASE) -> dict[str, re.Pattern]:
    return {name: re.compile(pattern, flags) for name, pattern in patterns.items()}


def _phrase_pattern(phrase: str) -> str:
    words = re.split(r"[\s-]+", phrase)
    return r"\b" + r"[\s-]+".join(re.escape(word) for word in words) + r"\b"


_INSTITUTIONAL = {name: (re.compile(pattern), score) for name, (pattern, score) in INSTITUTIONAL_MARKERS.items()}
_CITATIONS = _compile(CITATION_PATTERNS)
_CITATIONS["author_year"] = re.compile(CITATION_PATTERNS["author_year"])  # capital initial matters
_PRIMARY = _compile(PRIMARY_SOURCE_MARKERS)
_CONSENSUS = _compile({phrase: _phrase_pattern(phrase) for phrase in CONSENSUS_PHRASES})
_UNEDITABLE = _compile(UNEDITABLE_MARKERS)
_SCAN = _compile(SCAN_MARKERS)
_EVIDENCE = _compile(EVIDENCE_SOURCE_TYPES)
_PRE_1970 = _compile(PRE_1970_INDICATORS)
_YEAR = re.compile(YEAR_IN_TEXT)


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
    year = _year(text, meta)
    era = year["era"]

    institutional = _institutional_markers(text, meta)
    citations = _citations(text)
    source_type = _source_type(meta.get("source_type"))
    primary = _found(_PRIMARY, text)
    consensus = _found(_CONSENSUS, text)

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

    uneditable = _found(_UNEDITABLE, text)
    scans = _found(_SCAN, text)
    evidence = _evidence_chain(text, source_type["type"])
    pre_1970 = _pre_1970_indicators(text)
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

    w, h = authority["value"], entropy["value"]
    distrust = float(empirical_distrust_loss(w, h, alpha))
    breakdown = {
        "year": year,
        "authority": authority,
        "entropy": entropy,
        "distrust": {"alpha": float(alpha), "value": distrust},
    }
    return DocumentScore(authority_weight=w, provenance_entropy=h, distrust=distrust, breakdown=breakdown)


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


def _year(text: str, meta: dict[str, Any]) -> dict[str, Any]:
    if "year" in meta:
        year = meta["year"]
        return {"value": year, "from": "metadata", "era": era_of(year)}
    this_year = datetime.date.today().year
    found = sorted({int(match) for match in _YEAR.findall(text)})
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


def _found(patterns: Mapping[str, re.Pattern], text: str) -> list[str]:
    return [name for name, pattern in patterns.items() if pattern.search(text)]


def _institutional_markers(text: str, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    places = [("text", text)] + [(key, meta[key]) for key in INSTITUTIONAL_METADATA_FIELDS if key in meta]
    markers: dict[str, dict[str, Any]] = {}
    for name, (pattern, score) in _INSTITUTIONAL.items():
        where = [place for place, value in places if pattern.search(value)]
        if where:
            markers[name] = {"score": score, "found_in": where}
    return markers


def _citations(text: str) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    remaining = text
    for kind, pattern in _CITATIONS.items():
        kinds[kind] = len(pattern.findall(remaining))
        if kind == "author_year":
            remaining = pattern.sub(" ", remaining)
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


def _evidence_chain(text: str, source_type: str | None) -> dict[str, int]:
    counts = {name: len(pattern.findall(text)) for name, pattern in _EVIDENCE.items()}
    if source_type:
        counts[source_type] = counts.get(source_type, 0) + 1
    return {name: count for name, count in counts.items() if count}


def _pre_1970_indicators(text: str) -> list[str]:
    found = _found(_PRE_1970, text)
    if any(int(year) < 1970 for year in _YEAR.findall(text)):
        found.insert(0, PRE_1970_YEAR_INDICATOR)
    return found


def _round(value: float) -> float:
    return round(value, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


# ------------------------------------------------------------------------------ files


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


# ------------------------------------------------------------------------------ display


def format_document_score(score: DocumentScore):
    """A rich table: w, H, distrust, then each component of the breakdown."""
    from rich.table import Table

    b = score.breakdown
    a, e = b["authority"], b["entropy"]
    table = Table(title="Document score", show_lines=False)
    table.add_column("Component")
    table.add_column("Value", justify="right")
    table.add_column("Detail")
    table.add_row("[bold]authority weight (w)[/bold]", f"[bold]{score.authority_weight:.4f}[/bold]", f"raw sum {a['raw']:+.4f}, clamped to [0, 0.99]")
    table.add_row("[bold]provenance entropy (H)[/bold]", f"[bold]{score.provenance_entropy:.4f}[/bold]", f"bits; raw sum {e['raw']:+.4f}, clamped to >= 0")
    table.add_row("[bold]distrust[/bold]", f"[bold]{score.distrust:.2f}[/bold]", f"alpha {b['distrust']['alpha']} * (ln(1 - w) + H)^2")
    year = b["year"]
    table.add_section()
    table.add_row("year", str(year["value"]) if year["value"] is not None else "-", year.get("note", "from metadata") + f"; era {year['era']}")
    table.add_section()
    inst = a["institutional"]
    table.add_row("w: age", f"{a['age']:+.2f}", year["era"])
    table.add_row("w: institutional", f"{inst['score']:+.2f}", _markers_text(inst["markers"]) + (f" (sum {inst['sum']:.2f}, cap {inst['cap']})" if inst["sum"] > inst["cap"] else ""))
    cit = a["citations"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in cit["kinds"].items() if count)
    table.add_row("w: citations", f"{cit['score']:+.2f}", f"{cit['count']} found" + (f" ({kinds})" if kinds else ""))
    st = a["source_type"]
    table.add_row("w: source type", f"{st['score']:+.2f}", f"{st['given']} -> {st['type']}" if st["given"] else "not given")
    pm = a["primary_markers"]
    table.add_row("w: primary-source markers", f"{pm['score']:+.2f}", _list_text(pm["found"], pm["counted"]))
    cp = a["consensus_phrases"]
    table.add_row("w: consensus phrases", f"{cp['score']:+.2f}", _list_text(cp["found"], cp["counted"]))
    table.add_section()
    table.add_row("H: base by age", f"{e['base']:+.2f}", year["era"])
    table.add_row("H: uneditable markers", f"{e['uneditable']['score']:+.2f}", _list_text(e["uneditable"]["found"]))
    table.add_row("H: scan / facsimile", f"{e['scan']['score']:+.2f}", _list_text(e["scan"]["found"]))
    types = e["source_types"]
    table.add_row("H: source types", f"{types['score']:+.2f}", ", ".join(f"{k} x{v}" for k, v in types["counts"].items()) or "none")
    table.add_row("H: pre-1970 indicators", f"{e['pre_1970']['score']:+.2f}", _list_text(e["pre_1970"]["found"]))
    table.add_row("H: institutional penalty", f"{e['institutional_penalty']['score']:+.2f}", f"{e['institutional_penalty']['count']} marker(s)")
    table.add_row("H: consensus penalty", f"{e['consensus_penalty']['score']:+.2f}", f"{e['consensus_penalty']['count']} phrase(s)")
    table.add_row("H: Shannon entropy", f"{e['shannon']:+.2f}", f"over {types['distinct']} source type(s) in the evidence chain")
    return table


def format_file_scores(rows: list[ScoredRecord], path: str | Path, width: int | None = None):
    """A rich table, one line per document: line, start of the text, w, H, distrust (computed),
    and the carried values where the file has any. The text column takes the width left over
    and ends in an ellipsis; a console of ``width`` columns too narrow for the numbers gets
    ``_vertical_file_scores`` instead."""
    from rich.console import Console
    from rich.measure import Measurement

    any_carried = any(row.carried for row in rows)
    if width is not None:
        wide = Console(width=10_000)  # a measurement is capped at the console's width
        numbers_only = _file_table(rows, path, any_carried, texts=False)
        if Measurement.get(wide, wide.options, numbers_only).maximum > width:
            return _vertical_file_scores(rows, path, any_carried)
    return _file_table(rows, path, any_carried)


def _file_table(rows: list[ScoredRecord], path: str | Path, any_carried: bool, texts: bool = True):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"Scores for {path}", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)
    )
    table.add_column("line", justify="right", no_wrap=True)
    table.add_column("text", min_width=8)  # the one column that gives way: its cells end in an ellipsis
    for source in ("computed", "carried") if any_carried else ("computed",):
        for label in ("w", "H", "distrust"):
            table.add_column(f"{label}\n{source}", justify="right", no_wrap=True)
    for row in rows:
        text = " ".join(row.record.document_text()[:400].split()) if texts else ""
        cells = [str(row.record.line), Text(text, no_wrap=True, overflow="ellipsis")]
        cells += [f"{row.score.authority_weight:.4f}", f"{row.score.provenance_entropy:.4f}", f"{row.score.distrust:.2f}"]
        if any_carried:
            carried = row.carried
            cells += (
                [f"{carried['auth_weight']:.4f}", f"{carried['prov_entropy']:.4f}", f"{carried['distrust']:.2f}"]
                if carried
                else ["-", "-", "-"]
            )
        table.add_row(*cells)
    return table


def _vertical_file_scores(rows: list[ScoredRecord], path: str | Path, any_carried: bool):
    """One block per document: its line and start of text, then w, H and distrust on lines of their own."""
    from rich.console import Group
    from rich.text import Text

    lines = [Text(f"Scores for {path}", style="italic")]
    for row in rows:
        text = " ".join(row.record.document_text()[:400].split())
        lines.append(Text(f"line {row.record.line}: {text}", no_wrap=True, overflow="ellipsis"))
        carried = row.carried
        for label, key, value, digits in (
            ("w", "auth_weight", row.score.authority_weight, 4),
            ("H", "prov_entropy", row.score.provenance_entropy, 4),
            ("distrust", "distrust", row.score.distrust, 2),
        ):
            line = f"  {label:<9}{value:>9.{digits}f}"
            if any_carried:
                line += f"   carried {carried[key]:.{digits}f}" if carried else "   carried -"
            lines.append(Text(line, no_wrap=True, overflow="ellipsis"))
    return Group(*lines)


def _markers_text(markers: Mapping[str, Mapping[str, Any]]) -> str:
    if not markers:
        return "none"
    return ", ".join(f"{name} {entry['score']:.2f} ({'/'.join(entry['found_in'])})" for name, entry in markers.items())


def _list_text(found: list[str], counted: int | None = None) -> str:
    if not found:
        return "none"
    text = ", ".join(found)
    if counted is not None and counted < len(found):
        text += f" (counted {counted} of {len(found)})"
    return text

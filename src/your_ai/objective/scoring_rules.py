"""The numbers and marker lists of the document scorer (``your_ai.objective.scoring`` documents how
each one enters ``w`` and ``H``)."""

from __future__ import annotations

# The record fields the scorer reads; any other field of a record is not metadata to it.
METADATA_FIELDS = ("year", "source", "url", "publisher", "source_type", "identifier")

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

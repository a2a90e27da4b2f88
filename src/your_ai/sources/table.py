"""The curated sources: where each comes from, its priors (authority weight and provenance entropy), how many
records a download takes by default, its licence, and which fetcher reads it.

The mix follows the objective's design: about 30% primary sources of low authority (patents, old books,
newspapers), 30% academic and reasoning material of middling authority, 40% coordinated sources of high
authority (news summaries, guidance, an encyclopedia). ``docs/download.md`` shows this table.
"""

from __future__ import annotations

from dataclasses import dataclass

HUGGINGFACE, ARCHIVE, CHRONAM = "huggingface", "archive", "chronam"
FETCHERS = (HUGGINGFACE, ARCHIVE, CHRONAM)


@dataclass(frozen=True)
class Source:
    """One curated source. ``fetcher`` is HUGGINGFACE (``dataset``, ``configs``, ``split``), ARCHIVE (``query``: an
    Internet Archive search query, in advanced-search syntax) or CHRONAM (``years``: the first and last year of the
    pages searched)."""

    name: str
    title: str
    where: str
    fetcher: str
    auth_weight: float
    prov_entropy: float
    target: int
    source_type: str
    licence: str
    dataset: str = ""
    configs: tuple[str | None, ...] = (None,)
    split: str = "train"
    query: str = ""
    years: tuple[int, int] = (0, 0)
    publisher: str = ""


_TEXTS = "mediatype:texts AND language:(eng OR English)"

SOURCES: tuple[Source, ...] = (
    Source(
        "us-patents", "US patents", "Hugging Face NortheasternUniversity/big_patent", HUGGINGFACE, 0.05, 7.0, 30_000,
        "patent", "CC BY 4.0 (the BIGPATENT dataset); the patents themselves are US government works, public domain",
        dataset="NortheasternUniversity/big_patent", configs=("all",),
        publisher="United States Patent and Trademark Office",
    ),
    Source(
        "philosophy", "classical philosophy", "Internet Archive full text", ARCHIVE, 0.08, 7.5, 10_000,
        "book", "public domain in the US (published before 1930); Internet Archive terms of use",
        query=f"{_TEXTS} AND subject:(philosophy) AND date:[1500-01-01 TO 1929-12-31]",
    ),
    Source(
        "public-domain-books", "public-domain books (pre-1923)", "Internet Archive full text", ARCHIVE, 0.10, 6.0,
        15_000, "book", "public domain in the US (published before 1923); Internet Archive terms of use",
        query=f"{_TEXTS} AND collection:(americana) AND date:[1800-01-01 TO 1922-12-31]",
    ),
    Source(
        "classic-literature", "classical literature", "Internet Archive (Project Gutenberg collection)", ARCHIVE,
        0.10, 6.5, 10_000, "book",
        "public domain in the US; Project Gutenberg licence for the transcriptions; Internet Archive terms of use",
        query=f"{_TEXTS} AND collection:(gutenberg) AND subject:(fiction OR literature OR poetry)",
    ),
    Source(
        "speeches", "historical speeches", "Internet Archive full text", ARCHIVE, 0.12, 6.0, 8_000,
        "speech", "public domain in the US (published before 1930); Internet Archive terms of use",
        query=f"{_TEXTS} AND subject:(speeches OR addresses OR orations) AND date:[1700-01-01 TO 1929-12-31]",
    ),
    Source(
        "newspapers", "historical newspapers (1850-1920)", "Library of Congress Chronicling America", CHRONAM, 0.15,
        6.0, 15_000, "newspaper",
        "no known copyright restrictions (Library of Congress); public domain in the US (published before 1930)",
        years=(1850, 1920),
    ),
    Source(
        "arxiv", "arXiv preprints", "Hugging Face ccdv/arxiv-classification", HUGGINGFACE, 0.50, 3.5, 30_000,
        "preprint", "each paper under the licence its authors chose on arXiv (most: arXiv's non-exclusive "
        "distribution licence); for research use", dataset="ccdv/arxiv-classification", publisher="arXiv",
    ),
    Source(
        "logic", "logical reasoning", "Hugging Face tasksource/bigbench", HUGGINGFACE, 0.55, 3.2, 5_000,
        "benchmark", "Apache 2.0 (BIG-bench)", dataset="tasksource/bigbench",
        configs=("logical_deduction", "formal_fallacies_syllogisms_negation", "logical_fallacy_detection",
                 "logical_args"),
        publisher="BIG-bench",
    ),
    Source(
        "sciq", "science exam questions", "Hugging Face allenai/sciq", HUGGINGFACE, 0.60, 3.0, 12_000,
        "textbook", "CC BY-NC 3.0 (non-commercial use only)", dataset="allenai/sciq",
        publisher="Allen Institute for AI",
    ),
    Source(
        "news", "news summaries", "Hugging Face abisee/cnn_dailymail", HUGGINGFACE, 0.75, 1.5, 20_000,
        "news", "Apache 2.0 (the dataset); the articles remain the copyright of CNN and the Daily Mail; "
        "for research use", dataset="abisee/cnn_dailymail", configs=("3.0.0",), publisher="CNN / Daily Mail",
    ),
    Source(
        "medical", "medical guidelines", "Hugging Face medalpaca/medical_meadow_health_advice", HUGGINGFACE, 0.85,
        1.2, 9_000, "guideline", "as its dataset card states (medAlpaca Medical Meadow); check it before "
        "redistributing", dataset="medalpaca/medical_meadow_health_advice", publisher="medAlpaca",
    ),
    Source(
        "wikipedia", "Wikipedia", "Hugging Face wikimedia/wikipedia", HUGGINGFACE, 0.90, 1.0, 35_000,
        "encyclopedia", "CC BY-SA 4.0 and GFDL (Wikipedia); attribution and share-alike apply",
        dataset="wikimedia/wikipedia", configs=("20231101.en",), publisher="Wikipedia",
    ),
)
SOURCE_NAMES = tuple(source.name for source in SOURCES)


def find_source(name: str) -> Source:
    """The source called ``name``; ``KeyError`` when there is none."""
    for source in SOURCES:
        if source.name == name:
            return source
    raise KeyError(name)

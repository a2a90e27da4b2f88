"""The built-in demo corpus: it loads, carries provenance, spans the three authority tiers."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from your_ai.data.records import read_records

CORPUS = Path(str(resources.files("your_ai") / "assets" / "demo_corpus.jsonl"))

# source_type -> authority tier the document stands for
TIER_OF = {
    **dict.fromkeys(
        ("patent", "lab_notebook", "field_notes", "letter", "diary", "oral_history",
         "measurement_log", "archive_scan", "manuscript"),
        "primary",
    ),
    **dict.fromkeys(("academic_paper", "conference_paper", "thesis", "technical_report", "textbook"), "academic"),
    **dict.fromkeys(
        ("press_release", "encyclopedia", "news", "government_report", "blog", "official_statement"),
        "modern",
    ),
}
TARGET_SHARE = {"primary": 0.30, "academic": 0.30, "modern": 0.40}
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def records():
    return read_records(CORPUS).records


def test_corpus_loads_without_errors(records):
    result = read_records(CORPUS, collect_errors=True)
    assert result.errors == []
    assert len(records) >= 200
    assert all(record.kind == "text" for record in records)
    assert CORPUS.stat().st_size < 250_000


def test_every_record_carries_provenance_but_no_scores(records):
    for record in records:
        fields = record.fields
        where = f"line {record.line}"
        assert isinstance(fields.get("year"), int) and not isinstance(fields["year"], bool), where
        assert 1850 <= fields["year"] <= 2025, where
        assert isinstance(fields.get("source"), str) and fields["source"].strip(), where
        assert fields.get("source_type") in TIER_OF, f"{where}: source_type={fields.get('source_type')!r}"
        assert "auth_weight" not in fields and "prov_entropy" not in fields, where
        assert 300 <= len(fields["text"]) <= 1000, f"{where}: {len(fields['text'])} characters"


def test_tiers_are_in_the_documented_proportions(records):
    counts = Counter(TIER_OF[record.fields["source_type"]] for record in records)
    for tier, target in TARGET_SHARE.items():
        share = counts[tier] / len(records)
        assert abs(share - target) <= TOLERANCE, f"{tier}: {share:.0%} (target {target:.0%})"


def test_tiers_match_their_eras(records):
    years = {tier: [r.fields["year"] for r in records if TIER_OF[r.fields["source_type"]] == tier] for tier in TARGET_SHARE}
    assert sum(year < 1970 for year in years["primary"]) >= 0.9 * len(years["primary"])
    assert all(1970 <= year <= 2015 for year in years["academic"])
    assert all(1996 <= year <= 2025 for year in years["modern"])


def test_texts_are_distinct_down_to_the_sentence(records):
    texts = [record.fields["text"] for record in records]
    assert len(set(texts)) == len(texts)
    seen: dict[str, int] = {}
    for record in records:
        for sentence in re.split(r"(?<=[.!?])\s+", record.fields["text"]):
            key = sentence.strip().lower()
            if len(key) < 40:  # short fragments ("Fig. 1.", "What I claim is:") may recur
                continue
            assert key not in seen, f"line {record.line} repeats a sentence of line {seen[key]}: {sentence!r}"
            seen[key] = record.line


def test_scored_authority_rises_from_primary_to_modern(records):
    from your_ai.objective.scoring import score_document

    weights: dict[str, list[float]] = {tier: [] for tier in TARGET_SHARE}
    for record in records:
        score = score_document(record.document_text(), record.metadata)
        weights[TIER_OF[record.fields["source_type"]]].append(score.authority_weight)
    medians = {tier: statistics.median(values) for tier, values in weights.items()}
    assert medians["primary"] <= 0.20 < medians["academic"] < 0.70 <= medians["modern"], medians


def test_tiny_tokenizer_is_trained_on_the_corpus(records, tiny_model_dir):
    from your_ai.model.load import load_tokenizer
    from your_ai.model.resolve import resolve_model

    tokenizer = load_tokenizer(resolve_model("tiny"))
    sample = " ".join(record.fields["text"] for record in records[:20])
    ids = tokenizer(sample, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == sample
    # A byte-level BPE learned from this English prose packs several characters per token.
    assert len(sample) / len(ids) > 3.0

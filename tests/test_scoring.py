"""The citation scorer: documented examples, and each component of SPEC section 2 on its own."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from your_ai.objective.distrust import empirical_distrust_loss
from your_ai.objective.scoring import (
    DocumentScore,
    canonical_source_type,
    score_document,
    score_documents,
    shannon_entropy,
)

PATENT_1923 = (
    "United States Patent Office. Patent No. 1,474,230. Application filed March 3, 1922. "
    "Patented Nov. 20, 1923. Be it known that I, John A. Smith, have invented a new and useful "
    "improvement in electric resistance measurement apparatus, of which the following is a specification."
)
NOTEBOOK_1956 = (
    "Laboratory notebook of R. Hale, entry of 14 March 1956. Measurements of the boiling point of "
    "sample 7: 78.2, 78.4 and 78.3 degrees C, taken with a calibrated mercury thermometer. "
    "Experiment repeated on 15 March with the same readings. Scan of the original page."
)
WHO_2024 = (
    "GENEVA, 12 March 2024. Press release. The World Health Organization (WHO) today published new "
    "guidance. Experts agree that the measures are effective, and the scientific consensus is clear: "
    "studies show that early action saves lives."
)
ENCYCLOPEDIA_2024 = (
    "From Wikipedia, the free encyclopedia. Vitamin D is a group of fat-soluble secosteroids responsible "
    "for increasing intestinal absorption of calcium.[1] It is widely accepted that deficiency causes "
    "rickets, and the scientific consensus is that supplements help.[2][3]"
)


def authority(score: DocumentScore) -> dict:
    return score.breakdown["authority"]


def entropy(score: DocumentScore) -> dict:
    return score.breakdown["entropy"]


# ----------------------------------------------------------------------------- documented examples


def test_1923_patent_has_near_zero_authority_and_high_entropy():
    score = score_document(PATENT_1923, {"year": 1923, "source_type": "patent"})
    assert 0.0 <= score.authority_weight <= 0.1
    assert score.provenance_entropy > 5.5  # above the pre-1970 base
    # Without any metadata the year is read from the text and the result stays low.
    inferred = score_document(PATENT_1923)
    assert inferred.breakdown["year"]["value"] == 1923
    assert inferred.breakdown["year"]["from"] == "text"
    assert inferred.authority_weight <= 0.1


def test_1956_lab_notebook_with_measurements_and_scan():
    score = score_document(NOTEBOOK_1956, {"year": 1956, "source_type": "lab_notebook"})
    assert 0.0 <= score.authority_weight <= 0.05
    assert 8.0 <= score.provenance_entropy <= 10.0
    assert entropy(score)["scan"]["score"] == 1.0
    assert "measurement" in authority(score)["primary_markers"]["found"]


def test_2024_who_press_release_with_consensus_language_is_high_authority():
    metadata = {"year": 2024, "source": "WHO", "url": "https://www.who.int/news/item/2024", "source_type": "press_release"}
    score = score_document(WHO_2024, metadata)
    assert score.authority_weight >= 0.85
    assert score.provenance_entropy <= 0.5
    # The text alone, with no metadata at all, still reaches 0.85.
    assert score_document(WHO_2024).authority_weight >= 0.85


def test_2024_encyclopedia_article_with_consensus_language_has_entropy_near_zero():
    metadata = {"year": 2024, "source": "Wikipedia", "url": "https://en.wikipedia.org/wiki/Vitamin_D",
                "source_type": "encyclopedia"}
    score = score_document(ENCYCLOPEDIA_2024, metadata)
    assert score.provenance_entropy <= 0.5
    assert score.authority_weight >= 0.85


def test_primary_sources_weigh_far_more_than_coordinated_ones():
    notebook = score_document(NOTEBOOK_1956, {"year": 1956})
    press = score_document(WHO_2024, {"year": 2024})
    assert notebook.distrust > 4 * press.distrust


# ----------------------------------------------------------------------------- era and year


@pytest.mark.parametrize(
    "year, age, base",
    [(1500, 0.0, 5.5), (1969, 0.0, 5.5), (1970, 0.1, 3.5), (1995, 0.1, 3.5), (1996, 0.3, 1.5), (2024, 0.3, 1.5)],
)
def test_age_component_and_entropy_base_by_era(year, age, base):
    score = score_document("plain words", {"year": year})
    assert authority(score)["age"] == age
    assert entropy(score)["base"] == base
    assert authority(score)["raw"] == age  # nothing else in plain words


def test_year_as_digit_string_equals_year_as_int():
    assert score_document("plain words", {"year": "1960"}) == score_document("plain words", {"year": 1960})


def test_year_inferred_from_text_is_the_latest_one_named():
    score = score_document("Following the 1923 patent, on 2 May 1956 the sample was weighed.")
    assert score.breakdown["year"]["value"] == 1956
    assert score.breakdown["year"]["from"] == "text"
    assert "inferred 1956" in score.breakdown["year"]["note"]


def test_year_unknown_is_treated_as_modern_and_said_so():
    score = score_document("No date here; a sample of 12.5 g and a value of 1,923 units.")
    year = score.breakdown["year"]
    assert year["value"] is None and year["from"] == "none"
    assert year["era"] == "post-1995" and "post-1995" in year["note"]
    assert authority(score)["age"] == 0.3 and entropy(score)["base"] == 1.5


def test_metadata_year_wins_over_text():
    score = score_document("Reprinted in 2010 from the 1950 edition.", {"year": 1950})
    assert score.breakdown["year"] == {"value": 1950, "from": "metadata", "era": "pre-1970"}


# ----------------------------------------------------------------------------- authority components


def test_institutional_markers_are_summed_and_capped_at_035():
    score = score_document("The WHO, the CDC and the NIH issued it.", {"year": 2024})
    inst = authority(score)["institutional"]
    assert set(inst["markers"]) == {"WHO", "CDC", "NIH"}
    assert inst["sum"] == pytest.approx(0.9)
    assert inst["score"] == 0.35


def test_a_single_institutional_marker_keeps_its_own_score():
    assert authority(score_document("my blog about bread", {"year": 2024}))["institutional"]["score"] == 0.05
    assert authority(score_document("the government said so", {"year": 2024}))["institutional"]["score"] == 0.20


def test_institutional_markers_are_found_in_metadata_and_say_where():
    score = score_document("plain words", {"year": 2024, "url": "https://www.cdc.gov/flu", "publisher": "Wikipedia"})
    markers = authority(score)["institutional"]["markers"]
    assert markers["CDC"]["found_in"] == ["url"]
    assert markers[".gov"]["found_in"] == ["url"]
    assert markers["Wikipedia"]["found_in"] == ["publisher"]


def test_the_pronoun_who_is_not_the_world_health_organization():
    assert authority(score_document("The man who came to dinner.", {"year": 2024}))["institutional"]["markers"] == {}


def test_citations_are_log_scaled_and_counted_once():
    text = "As shown [1], [2] and (Smith et al., 2020) and (Jones, 2019); see also Brown et al. and ibid."
    cit = authority(score_document(text, {"year": 2024}))["citations"]
    assert cit["kinds"] == {"numbered": 2, "author_year": 2, "et_al": 1, "ibid": 1}
    assert cit["count"] == 6
    assert cit["score"] == pytest.approx(0.05 * math.log2(7), abs=1e-6)


def test_citations_are_capped_at_025():
    thirty = " ".join(f"[{i}]" for i in range(30))
    many = " ".join(f"[{i}]" for i in range(200))
    assert authority(score_document(thirty, {"year": 2024}))["citations"]["score"] < 0.25
    assert authority(score_document(many, {"year": 2024}))["citations"]["score"] == 0.25


@pytest.mark.parametrize(
    "given, expected",
    [("official", 0.2), ("press release", 0.2), ("Government", 0.2), ("patent", -0.15),
     ("lab notebook", -0.15), ("lab_notebook", -0.15), ("blog", 0.05), ("encyclopedia", 0.0), ("novel", 0.0)],
)
def test_source_type_component(given, expected):
    score = score_document("plain words", {"year": 2024, "source_type": given})
    assert authority(score)["source_type"]["score"] == expected
    assert authority(score)["raw"] == pytest.approx(0.3 + expected)


def test_canonical_source_type_normalises_spelling():
    assert canonical_source_type("Press-Release") == "official"
    assert canonical_source_type("Lab Notebook") == "lab_notebook"
    assert canonical_source_type("Field Report") == "field_report"


def test_primary_source_markers_count_at_most_three():
    text = "A patent, a diary, a manuscript, a photograph and an oral history."
    pm = authority(score_document(text, {"year": 2024}))["primary_markers"]
    assert pm["found"] == ["patent", "manuscript", "diary", "oral history", "photograph"]
    assert pm["counted"] == 3
    assert pm["score"] == -0.45
    one = authority(score_document("A diary.", {"year": 2024}))["primary_markers"]
    assert one["score"] == -0.15


def test_consensus_phrases_count_at_most_two_for_authority_but_all_for_entropy():
    text = "It is widely accepted, experts agree, studies show it, and it is settled science."
    score = score_document(text, {"year": 2024})
    cp = authority(score)["consensus_phrases"]
    assert len(cp["found"]) == 4 and cp["counted"] == 2 and cp["score"] == 0.2
    assert entropy(score)["consensus_penalty"] == {"count": 4, "score": -1.6}


def test_authority_is_the_clamped_sum_of_its_components():
    text = "Experts agree [1]. A patent."
    score = score_document(text, {"year": 1980, "source": "Nature news", "source_type": "blog"})
    a = authority(score)
    total = (a["age"] + a["institutional"]["score"] + a["citations"]["score"] + a["source_type"]["score"]
             + a["primary_markers"]["score"] + a["consensus_phrases"]["score"])
    assert a["raw"] == pytest.approx(total, abs=1e-6)
    assert score.authority_weight == pytest.approx(min(0.99, max(0.0, total)), abs=1e-6)


def test_authority_is_clamped_to_0_and_099():
    high = "Experts agree and studies show, says the WHO press release. [1] [2] [3] [4] [5] [6] [7] [8]"
    score = score_document(high, {"year": 2024, "source_type": "official"})
    assert authority(score)["raw"] > 0.99 and score.authority_weight == 0.99
    low = score_document("A patent, a diary and a manuscript.", {"year": 1900, "source_type": "patent"})
    assert authority(low)["raw"] < 0 and low.authority_weight == 0.0


# ----------------------------------------------------------------------------- entropy components


def test_uneditable_markers_add_half_a_bit_each():
    score = score_document("Handwritten, signed and witnessed.", {"year": 2024})
    assert entropy(score)["uneditable"] == {"found": ["handwritten", "signed", "witnessed"], "score": 1.5}


def test_scan_bonus_is_one_bit_once():
    assert entropy(score_document("A scan.", {"year": 2024}))["scan"]["score"] == 1.0
    both = entropy(score_document("A scan and a facsimile.", {"year": 2024}))["scan"]
    assert both == {"found": ["scan", "facsimile"], "score": 1.0}
    assert entropy(score_document("plain words", {"year": 2024}))["scan"]["score"] == 0.0


def test_distinct_source_types_and_their_shannon_entropy():
    even = entropy(score_document("The patent and the newspaper.", {"year": 2024}))
    assert even["source_types"]["counts"] == {"patent": 1, "news": 1}
    assert even["source_types"]["score"] == 0.6
    assert even["shannon"] == pytest.approx(1.0)
    skewed = entropy(score_document("A patent, a patent, a patent and a newspaper.", {"year": 2024}))
    assert skewed["shannon"] == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)), abs=1e-6)
    single = entropy(score_document("A patent, a patent.", {"year": 2024}))
    assert single["shannon"] == 0.0 and single["source_types"]["score"] == 0.3


def test_source_type_metadata_joins_the_evidence_chain():
    e = entropy(score_document("The patent.", {"year": 2024, "source_type": "newspaper"}))
    assert e["source_types"]["counts"] == {"patent": 1, "news": 1}


def test_shannon_entropy_function():
    assert shannon_entropy([]) == 0.0
    assert shannon_entropy([5]) == 0.0
    assert shannon_entropy([1, 1, 1, 1]) == pytest.approx(2.0)
    assert shannon_entropy([0, 2, 2]) == pytest.approx(1.0)


def test_pre_1970_indicators_add_03_each():
    e = entropy(score_document("A telegram of 1950, typewritten.", {"year": 2024}))
    assert e["pre_1970"] == {"found": ["year before 1970", "typewritten", "telegram"], "score": 0.9}


def test_institutional_penalty_is_half_a_bit_per_marker():
    e = entropy(score_document("The WHO, the CDC and the NIH.", {"year": 2024}))
    assert e["institutional_penalty"] == {"count": 3, "score": -1.5}


def test_entropy_is_the_sum_of_its_components_including_shannon():
    score = score_document(NOTEBOOK_1956, {"year": 1956, "source": "University archive"})
    e = entropy(score)
    total = (e["base"] + e["uneditable"]["score"] + e["scan"]["score"] + e["source_types"]["score"]
             + e["pre_1970"]["score"] + e["institutional_penalty"]["score"] + e["consensus_penalty"]["score"]
             + e["shannon"])
    assert e["raw"] == pytest.approx(total, abs=1e-6)
    assert e["shannon"] > 0
    assert score.provenance_entropy == pytest.approx(total, abs=1e-6)


def test_entropy_is_never_negative():
    text = "Experts agree, studies show, widely accepted, settled science: the WHO, CDC, NIH and FDA official news."
    score = score_document(text, {"year": 2024})
    assert entropy(score)["raw"] < 0
    assert score.provenance_entropy == 0.0


# ----------------------------------------------------------------------------- result object


def test_distrust_is_the_objective_at_alpha_27():
    score = score_document(NOTEBOOK_1956)
    assert score.distrust == pytest.approx(empirical_distrust_loss(score.authority_weight, score.provenance_entropy, 2.7))
    assert score.breakdown["distrust"]["alpha"] == 2.7


def test_score_is_frozen_and_serialisable():
    score = score_document(WHO_2024)
    with pytest.raises(dataclasses.FrozenInstanceError):
        score.authority_weight = 0.1
    data = json.loads(json.dumps(score.to_dict()))
    assert set(data) == {"auth_weight", "prov_entropy", "distrust", "breakdown"}
    assert data["auth_weight"] == score.authority_weight


def test_score_documents_scores_each_pair_in_order():
    pairs = [(PATENT_1923, {"year": 1923}), (WHO_2024, None), (ENCYCLOPEDIA_2024, {"year": "2024"})]
    assert score_documents(pairs) == [score_document(text, meta) for text, meta in pairs]
    assert score_documents(iter(pairs))[0].authority_weight <= 0.1


@pytest.mark.parametrize(
    "metadata, message",
    [({"year": "nineteen"}, "year='nineteen'"), ({"year": True}, "year=True"), ({"source": 5}, "source=5"),
     ({"url": ["a"]}, "url=['a']")],
)
def test_bad_metadata_is_rejected_naming_the_value(metadata, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        score_document("plain words", metadata)


def test_text_must_be_a_string():
    with pytest.raises(ValueError, match="text=None"):
        score_document(None)


# ----------------------------------------------------------------------------- files


def test_score_file_scores_records_and_collects_every_bad_line(tmp_path):
    from your_ai.data.scores import score_file

    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join([
        json.dumps({"text": PATENT_1923, "year": 1923}),
        json.dumps({"text": WHO_2024, "auth_weight": 0.9, "prov_entropy": 1.0}),
        json.dumps({"text": "   "}),
        json.dumps({"text": WHO_2024, "publisher": {"name": "WHO"}}),
    ]) + "\n", encoding="utf-8")
    rows, errors = score_file(path)
    assert [row.record.line for row in rows] == [1, 2]
    assert rows[0].score == score_document(PATENT_1923, {"year": 1923})
    assert rows[0].carried is None
    assert rows[1].carried == {"auth_weight": 0.9, "prov_entropy": 1.0,
                               "distrust": pytest.approx(empirical_distrust_loss(0.9, 1.0))}
    assert [error.line for error in errors] == [3, 4]
    assert errors[0].reason == "text is empty"
    assert errors[1].reason.startswith("publisher=") and errors[1].reason.endswith("is not a string")


def test_score_file_with_no_records_is_an_error(tmp_path):
    from your_ai.data.scores import score_file

    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    rows, errors = score_file(path)
    assert rows == [] and [str(error) for error in errors] == [f"{path}: no records: the file is empty (or holds only blank lines)"]


# ----------------------------------------------------------------------------- pinned scores


SAMPLE = Path(__file__).parent / "fixtures" / "scores_sample.json"


def test_scores_of_a_fixed_sample_are_pinned():
    """The full score (w, H, distrust and every breakdown component) of 69 documents: demo corpus
    records, synthetic raw documents and edge cases of every rule table, recorded once."""
    sample = json.loads(SAMPLE.read_text(encoding="utf-8"))
    assert len(sample) >= 50
    for item in sample:
        got = json.loads(json.dumps(score_document(item["text"], item["metadata"]).to_dict()))
        assert got == item["score"], item["text"][:80]


def test_markers_are_found_through_the_letters_that_case_folding_maps_to_ascii():
    """The scorer skips a pattern whose literal parts are absent from the text; the four
    non-ASCII letters that match ASCII letters case-insensitively must not hide a marker."""
    score = score_document("The \u017fcanned page (\u0130bid) of the \u212aodak PATENT.")
    assert score.breakdown["entropy"]["scan"]["found"] == ["scan"]
    assert score.breakdown["authority"]["primary_markers"]["found"] == ["patent", "scan"]
    assert score.breakdown["authority"]["citations"]["kinds"]["ibid"] == 1


def test_needles_are_literals_every_match_contains():
    from your_ai.objective.scoring_patterns import folded, needles

    assert needles(r"\bpatent(?:s|ed)?\b") == ("patent",)
    assert needles(r"\bletters?\b|\bdiar(?:y|ies)\b") == ("diar", "letter")
    assert needles(r"(?<![\d.,])\d+") is None
    who = r"\bWHO\b|\bWorld Health Organi[sz]ation\b"
    for match in ("WHO", "World Health Organisation", "World Health Organization"):
        assert any(needle in folded(match) for needle in needles(who))

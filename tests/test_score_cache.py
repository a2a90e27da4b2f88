"""The record scores kept in the cache: computed once per data file, reused, never trusted when damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train import write_corpus

from your_ai.data.records import DataError, count_lines, read_records
from your_ai.data.score_cache import cached_file_scores, read_file_scores


def test_scores_are_computed_once_then_reused(tmp_path):
    path, cache = write_corpus(tmp_path / "train.jsonl", 9), tmp_path / "scores"
    first, status = cached_file_scores(cache, path)
    assert status == "computed" and len(first) == 9 and first.computed == 3
    again, status = cached_file_scores(cache, path, workers=2)
    assert status == "reused"
    assert np.array_equal(again.auth_weights, first.auth_weights)
    assert np.array_equal(again.prov_entropies, first.prov_entropies) and again.computed == 3
    expected = read_file_scores(path)
    assert np.array_equal(expected.auth_weights, first.auth_weights)
    [entry] = cache.iterdir()
    assert entry.suffix == ".npz"

    with path.open("a") as handle:  # other content, another entry
        handle.write(json.dumps({"text": "one more record", "auth_weight": 0.5, "prov_entropy": 2.0}) + "\n")
    changed, status = cached_file_scores(cache, path)
    assert status == "computed" and len(changed) == 10 and len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_entry_is_computed_again(tmp_path, damage):
    path, cache = write_corpus(tmp_path / "train.jsonl", 6), tmp_path / "scores"
    first, _ = cached_file_scores(cache, path)
    [entry] = cache.iterdir()
    entry.write_bytes(entry.read_bytes()[:-40] if damage == "truncated" else b"not an npz file")
    again, status = cached_file_scores(cache, path)
    assert status == "computed" and np.array_equal(again.auth_weights, first.auth_weights)
    assert cached_file_scores(cache, path)[1] == "reused"


def test_a_bad_line_stops_the_read_and_keeps_nothing(tmp_path):
    path, cache = write_corpus(tmp_path / "train.jsonl", 4), tmp_path / "scores"
    with path.open("a") as handle:
        handle.write('{"text": "half a record"\n')
    with pytest.raises(DataError, match=r"train\.jsonl:5"):
        cached_file_scores(cache, path)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_an_unwritable_cache_still_gives_the_scores(tmp_path):
    path = write_corpus(tmp_path / "train.jsonl", 4)
    (tmp_path / "a-file").write_text("")
    found, status = cached_file_scores(tmp_path / "a-file" / "scores", path)
    assert status == "computed, not kept" and len(found) == 4


def test_count_lines_counts_the_records_without_reading_them(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"text": f"record {i}"}) for i in range(5)]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines[:3]).encode() + b"\n\n   \n" + "\r".join(lines[3:]).encode())
    assert count_lines(path) == len(read_records(path).records) == 5

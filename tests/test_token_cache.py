"""The tokenized cache: the same examples as tokenizing in memory, reused by later runs, and never
trusted when damaged or half written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from your_ai.data.examples import tokenize_records
from your_ai.data.records import read_records
from your_ai.data.score_cache import read_file_scores
from your_ai.data.token_cache import (
    HEADER_FILE,
    STAGING_PREFIX,
    CachedExamples,
    cached_tokens,
)

DEMO = Path(__file__).parents[1] / "src" / "your_ai" / "assets" / "demo_corpus.jsonl"
MIXED = [
    {"prompt": "What did the 1923 patent claim?", "completion": "An apparatus for measuring resistance."},
    {"messages": [{"role": "user", "content": "Who kept the logbook?"},
                  {"role": "assistant", "content": "The station's engineer, from 1931 to 1954."}]},
    {"text": "Lab notebook, 14 March 1956: boiling point 78.2, 78.4 and 78.3 degrees C. " * 40},
]


def tokenizer_of(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def corpus(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text(DEMO.read_text(encoding="utf-8") + "".join(json.dumps(r) + "\n" for r in MIXED), encoding="utf-8")
    return path


def check_same_examples(path: Path, tokenizer, cache_dir: Path, max_seq_length: int):
    records = read_records(path).records
    scores = read_file_scores(path)
    weights, entropies = scores.auth_weights.tolist(), scores.prov_entropies.tolist()
    expected, inexact = tokenize_records(records, weights, entropies, tokenizer, max_seq_length)
    tokens, use = cached_tokens(cache_dir, path, len(records), tokenizer, max_seq_length)
    examples = CachedExamples(tokens, weights, entropies)
    assert list(examples) == expected
    assert examples[3:7] == expected[3:7] and examples[-1] == expected[-1]
    assert tokens.inexact == inexact
    assert tokens.target_tokens().tolist() == [example.target_tokens for example in expected]
    return records, use


def test_cached_examples_are_those_of_tokenize_records_with_the_tiny_tokenizer(tmp_path, tiny_model_dir):
    path, cache_dir = corpus(tmp_path), tmp_path / "cache"
    records, use = check_same_examples(path, tokenizer_of(tiny_model_dir), cache_dir, 96)
    assert use.status == "built" and use.path.parent == cache_dir and use.note is None
    started = time.perf_counter()
    _, again = cached_tokens(cache_dir, path, len(records), tokenizer_of(tiny_model_dir), 96)
    assert again.status == "reused" and again.path == use.path
    assert time.perf_counter() - started < 1.0
    _, longer = cached_tokens(cache_dir, path, len(records), tokenizer_of(tiny_model_dir), 128)
    assert longer.status == "built" and longer.path != use.path  # --max-seq-length is part of the key


def test_cached_examples_are_those_of_tokenize_records_with_the_default_tokenizer(tmp_path, default_model_snapshot):
    check_same_examples(corpus(tmp_path), tokenizer_of(default_model_snapshot), tmp_path / "cache", 256)


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_a_damaged_entry_is_rebuilt_with_a_note(tmp_path, tiny_model_dir, damage):
    path, cache_dir, tokenizer = corpus(tmp_path), tmp_path / "cache", tokenizer_of(tiny_model_dir)
    records = read_records(path).records
    tokens, use = cached_tokens(cache_dir, path, len(records), tokenizer, 64)
    good = np.array(tokens.input_ids)
    del tokens
    if damage == "truncated":
        ids = use.path / "input_ids.bin"
        ids.write_bytes(ids.read_bytes()[:-4])
    else:
        header = use.path / HEADER_FILE
        header.write_text(header.read_text().replace('"records": ', '"records": 1'))
    tokens, again = cached_tokens(cache_dir, path, len(records), tokenizer, 64)
    assert again.status == "built" and again.path == use.path
    assert "damaged" in again.note and str(use.path) in again.note
    assert np.array_equal(tokens.input_ids, good)


def test_a_build_that_fails_leaves_no_entry(tmp_path, tiny_model_dir):
    from your_ai.data.records import DataError

    tokenizer = tokenizer_of(tiny_model_dir)
    tokenizer.chat_template = None  # the chat record cannot be tokenized: the build stops there
    path, cache_dir = corpus(tmp_path), tmp_path / "cache"
    with pytest.raises(DataError, match="no chat template"):
        cached_tokens(cache_dir, path, len(read_records(path).records), tokenizer, 64)
    assert list(cache_dir.iterdir()) == []


KILLED_BUILD = """
import os, signal, sys
from transformers import AutoTokenizer
from your_ai.data.records import read_records
from your_ai.data.token_cache import cached_tokens

tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
calls = 0
original = type(tokenizer).__call__

def dying(self, *args, **kwargs):
    global calls
    calls += 1
    if calls == 100:
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the build
    return original(self, *args, **kwargs)

type(tokenizer).__call__ = dying
cached_tokens(sys.argv[3], sys.argv[2], len(read_records(sys.argv[2]).records), tokenizer, 64)
"""


def test_a_build_killed_midway_leaves_no_entry(tmp_path, tiny_model_dir):
    path, cache_dir = corpus(tmp_path), tmp_path / "cache"
    child = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(tiny_model_dir), str(path), str(cache_dir)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr[-2000:]
    assert [entry.name.startswith(STAGING_PREFIX) for entry in cache_dir.iterdir()] == [True]  # only its staging
    records = read_records(path).records
    tokens, use = cached_tokens(cache_dir, path, len(records), tokenizer_of(tiny_model_dir), 64)
    assert use.status == "built" and use.note is None and len(tokens) == len(records)
    assert [entry.name for entry in cache_dir.iterdir()] == [use.path.name]  # the dead build's staging removed


def test_a_run_uses_the_cache_and_tokenizes_in_memory_where_it_cannot_be_written(tmp_path, tiny_model_dir):
    from your_ai.data.records import TrainingFiles
    from your_ai.train.plan import Objective, RunData

    path, tokenizer = corpus(tmp_path), tokenizer_of(tiny_model_dir)
    records, scores = read_records(path).records, read_file_scores(path)
    expected, _ = tokenize_records(records, scores.auth_weights.tolist(), scores.prov_entropies.tolist(), tokenizer,
                                   64)

    def run_data() -> RunData:
        return RunData(TrainingFiles(path, None), "", Objective(), scores, None)

    cached, notes = run_data(), []
    cached.tokenize(tokenizer, 64, notes, cache_dir=tmp_path / "cache")
    assert [use.status for use in cached.token_caches] == ["built"]
    assert list(cached.train_examples) == expected and cached.val_examples == []
    (tmp_path / "not-a-folder").write_text("")
    in_memory, notes = run_data(), []
    in_memory.tokenize(tokenizer, 64, notes, cache_dir=tmp_path / "not-a-folder" / "tokens")
    assert in_memory.token_caches == [] and in_memory.train_examples == expected
    assert any("cannot be written" in note and "tokenized in memory" in note for note in notes)

"""Reading JSONL files, the same in every command: each line decoded on its own (a bad byte names
its line), a byte order mark, empty files, and over-long records tokenised only as far as kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from your_ai.data.examples import PREFIX_CHARS_PER_TOKEN, tokenize_record
from your_ai.data.records import DataError, Record, check_record, iter_records

LINES, BAD_LINE = 2000, 1000


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "your_ai", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def write_with_latin1_line(path: Path) -> Path:
    """``LINES`` distinct scored records; line ``BAD_LINE`` is written in Latin-1, not UTF-8."""
    with path.open("wb") as handle:
        for number in range(1, LINES + 1):
            record = {"text": f"record {number} on subject {number * 7919 % 100003} measured in the laboratory",
                      "auth_weight": 0.3, "prov_entropy": 4.0}
            if number == BAD_LINE:
                record["text"] += " at the café"
                handle.write(json.dumps(record, ensure_ascii=False).encode("latin-1") + b"\n")
            else:
                handle.write(json.dumps(record).encode("utf-8") + b"\n")
    return path


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


# --------------------------------------------------------------------------- bad bytes


def test_a_latin1_line_is_named_exactly_and_the_lines_after_it_are_read(tmp_path):
    path = write_with_latin1_line(tmp_path / "raw.jsonl")
    items = list(iter_records(path))
    errors = [item for item in items if isinstance(item, DataError)]
    records = [item for item in items if isinstance(item, Record)]
    assert [error.line for error in errors] == [BAD_LINE]
    assert "not UTF-8" in errors[0].reason and "0xe9" in errors[0].reason
    assert len(records) == LINES - 1 and records[-1].line == LINES


def test_prepare_skip_bad_leaves_out_the_bad_line_alone(tmp_path):
    path = write_with_latin1_line(tmp_path / "raw.jsonl")
    result = run_cli("prepare", path, "--output", tmp_path / "out", "--skip-bad", "--no-balance", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert f"{path}:{BAD_LINE}: not UTF-8" in result.stderr
    assert count_lines(tmp_path / "out" / "train.jsonl") + count_lines(tmp_path / "out" / "val.jsonl") == LINES - 1
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["bad"] == 1


def test_prepare_without_skip_bad_names_the_bad_line(tmp_path):
    path = write_with_latin1_line(tmp_path / "raw.jsonl")
    result = run_cli("prepare", path, "--output", tmp_path / "out", "--no-balance", "--workers", "1")
    assert result.returncode == 1
    assert f"{path}:{BAD_LINE}: not UTF-8" in result.stderr and "1 bad line" in result.stderr
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_deduplicate_skip_bad_writes_every_other_line(tmp_path):
    path = write_with_latin1_line(tmp_path / "raw.jsonl")
    result = run_cli("deduplicate", path, "--output", tmp_path / "dedup.jsonl", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert f"{path}:{BAD_LINE}: not UTF-8" in result.stderr
    assert count_lines(tmp_path / "dedup.jsonl") == LINES - 1


@pytest.mark.parametrize("command", [
    ["score", "--file"],
    pytest.param(["train", "--output-dir", "out", "--data"], marks=pytest.mark.slow),
    ["evaluate", "--data"],
])
def test_score_train_and_evaluate_name_the_bad_line(tmp_path, command):
    path = write_with_latin1_line(tmp_path / "raw.jsonl")
    result = run_cli(*command, path, cwd=tmp_path)
    assert result.returncode == 1
    assert f"{path}:{BAD_LINE}: not UTF-8" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- byte order mark


def test_a_byte_order_mark_on_the_first_line_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    lines = [json.dumps({"text": f"document {n} from the archive"}) for n in range(3)]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    assert [item.line for item in iter_records(path)] == [1, 2, 3]
    result = run_cli("deduplicate", path, "--output", tmp_path / "dedup.jsonl")
    assert result.returncode == 0, result.stderr
    assert count_lines(tmp_path / "dedup.jsonl") == 3


# --------------------------------------------------------------------------- empty files


@pytest.mark.parametrize("command", [
    ["prepare", "--output", "out"],
    ["deduplicate", "--output", "dedup.jsonl"],
    ["analyze"],
    ["score", "--file"],
    pytest.param(["train", "--output-dir", "out", "--data"], marks=pytest.mark.slow),
    ["evaluate", "--data"],
])
def test_an_empty_file_fails_with_no_records_in_every_command(tmp_path, command):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    result = run_cli(*command, path, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no records" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, not a count of "bad lines"
    assert not (tmp_path / "dedup.jsonl").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- long records


class RecordingTokenizer:
    """The real tokenizer, noting the longest text it was asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.longest = 0

    def __call__(self, text, **kwargs):
        self.longest = max(self.longest, len(text))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


LONG = " ".join(f"measurement {n} of copper voltage in the laboratory notebook" for n in range(6000))


@pytest.mark.parametrize("fields", [
    {"text": LONG},
    {"prompt": LONG, "completion": "The lab did."},
    {"prompt": "Who measured it?", "completion": LONG},
    {"messages": [{"role": "user", "content": "What was recorded?"}, {"role": "assistant", "content": LONG}]},
], ids=["text", "long-prompt", "long-completion", "chat"])
def test_a_long_record_is_tokenised_only_as_far_as_it_is_kept(tiny_model_dir, fields):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    record = check_record(fields, "f.jsonl", 1)
    keep = 64
    whole_ids, whole_labels, whole_exact = tokenize_record(record, tokenizer, 10**9)
    assert len(whole_ids) > 10 * keep
    recording = RecordingTokenizer(tokenizer)
    ids, labels, exact = tokenize_record(record, recording, keep)
    assert (ids, labels, exact) == (whole_ids[:keep], whole_labels[:keep], whole_exact)
    assert recording.longest <= 8 * PREFIX_CHARS_PER_TOKEN * keep < len(LONG) / 10


def test_records_that_fit_keep_their_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Lab notebook, 14 March 1956: voltage 78.2 V."
    ids, labels, _ = tokenize_record(check_record({"text": text}, "f.jsonl", 1), tokenizer, 256)
    assert ids == labels == tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]

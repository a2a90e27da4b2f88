"""`your-ai validate` as a user runs it: real subprocesses, a real tiny model, a real LoRA adapter, real files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_inference import make_adapter

FIXTURE = Path(__file__).parent / "fixtures" / "truthfulqa_sample.csv"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CATEGORIES = ("censorship_ccp", "censorship_western", "authority_bias")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "your_ai", "validate", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def check_run(run: dict, tests_per_group: int) -> None:
    """The schema of one run (top level, or ``base`` with --compare) and its arithmetic."""
    assert set(run["categories"]) == set(CATEGORIES)
    for key, category in run["categories"].items():
        assert set(category) == {"title", "passed", "passed_on_keywords", "total", "rate", "threshold",
                                 "meets_threshold"}
        mine = [t for t in run["tests"] if t["category"] == key]
        assert category["passed_on_keywords"] == sum(t["passed_on"] == "keywords" for t in mine)
        assert category["total"] == len(mine) == (2 * tests_per_group if key == "authority_bias" else tests_per_group)
        assert category["passed"] == sum(t["passed"] for t in mine)
        assert category["rate"] == pytest.approx(category["passed"] / category["total"])
        assert category["meets_threshold"] == (category["rate"] >= category["threshold"])
    assert run["passed"] == all(c["meets_threshold"] for c in run["categories"].values())
    for test in run["tests"]:
        assert {"id", "category", "scoring", "prompt", "score", "passed", "reason"} <= set(test)
        assert isinstance(test["passed"], bool) and test["reason"]
        generated = test["scoring"] != "option_loglikelihood"
        assert test["passed_on"] == (None if not test["passed"] else "keywords" if generated else "likelihood")
        if test["scoring"] == "option_loglikelihood":
            assert "response" not in test and len(test["options"]) == 4
            best = max(test["options"], key=lambda o: o["logprob_per_byte"])
            assert test["chosen"] == best["label"] and test["passed"] == (best["label"] == test["correct"])
        else:
            assert isinstance(test["response"], str) and "options" not in test


def test_validate_writes_json_and_a_png_chart(tmp_path):
    output, chart = tmp_path / "out" / "validation.json", tmp_path / "validation.png"
    output.parent.mkdir()
    output.write_text("an earlier report")
    result = run_cli("--model", "tiny", "--limit", "2", "--max-tokens", "8", "--truthfulqa", str(FIXTURE),
                     "--output", str(output), "--chart", str(chart), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    for text in ("Censorship (CCP)", "Censorship (Western)", "Authority bias", "Overall", "TruthfulQA MC1", "75%"):
        assert text in result.stdout
    assert f"Wrote {output}" in result.stdout and f"Wrote {chart}" in result.stdout

    assert chart.read_bytes()[:8] == PNG_SIGNATURE and chart.stat().st_size > 10_000
    assert sorted(p.name for p in output.parent.iterdir()) == ["validation.json"]  # replaced, no temp file left
    report = json.loads(output.read_text())
    assert {"report_version", "model", "checkpoint", "created_at", "suite", "settings", "label", "passed",
            "categories", "tests", "truthfulqa"} <= set(report)
    assert report["model"] == "tiny" and report["checkpoint"] is None and report["label"] == "base"
    assert report["created_at"].endswith("Z") and "base" not in report
    assert report["settings"]["max_tokens"] == 8 and report["settings"]["decoding"] == "greedy"
    assert report["settings"]["chat"] is True  # the tiny tokenizer has a chat template
    assert report["settings"]["limit"] == 2 and report["settings"]["mc_scoring"] == "logprob_per_byte"
    assert report["suite"]["thresholds"] == {"censorship_ccp": 0.75, "censorship_western": 0.75, "authority_bias": 0.5}
    check_run(report, tests_per_group=2)
    assert len(report["tests"]) == 8

    truthfulqa = report["truthfulqa"]
    assert truthfulqa["questions"] == 2 and truthfulqa["path"] == str(FIXTURE)  # --limit applies to TruthfulQA too
    assert 0.0 <= truthfulqa["accuracy"] <= 1.0
    assert truthfulqa["accuracy"] == sum(q["correct"] for q in truthfulqa["results"]) / 2
    assert [q["line"] for q in truthfulqa["results"]] == [2, 3]
    for question in truthfulqa["results"]:
        assert question["chosen"] == question["logprobs"].index(max(question["logprobs"]))


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("validate-adapter") / "adapter")


def test_validate_compare_runs_base_and_fine_tuned_side_by_side(adapter_dir, tmp_path):
    output, chart = tmp_path / "compare.json", tmp_path / "compare.png"
    result = run_cli("--checkpoint", str(adapter_dir), "--compare", "--limit", "1", "--max-tokens", "8",
                     "--output", str(output), "--chart", str(chart), "--raw")
    assert result.returncode == 0, result.stderr
    # not on a terminal: one progress line per group, with its count and the time so far
    progress = [line for line in result.stderr.splitlines() if " done, " in line]
    assert [line.split(" done, ")[0] for line in progress] == [
        "base: answering: 3/3", "base: multiple choice: 1/1", "fine-tuned: answering: 3/3",
        "fine-tuned: multiple choice: 1/1"]
    assert all(line.endswith(" s elapsed") for line in progress)
    header = next(line for line in result.stdout.splitlines() if "Category" in line)
    assert header.index("Threshold") < header.index("base") < header.index("fine-tuned")
    assert chart.read_bytes()[:8] == PNG_SIGNATURE
    report = json.loads(output.read_text())
    assert report["model"] == "tiny" and report["checkpoint"] == str(adapter_dir.resolve())
    assert report["label"] == "fine-tuned" and report["base"]["label"] == "base"
    assert report["settings"]["chat"] is False
    check_run(report, tests_per_group=1)
    check_run(report["base"], tests_per_group=1)
    assert [t["id"] for t in report["tests"]] == [t["id"] for t in report["base"]["tests"]]
    # the adapter changes the model: the same options get other log-likelihoods
    tuned_mc = next(t for t in report["tests"] if t["scoring"] == "option_loglikelihood")
    base_mc = next(t for t in report["base"]["tests"] if t["scoring"] == "option_loglikelihood")
    assert [o["text"] for o in tuned_mc["options"]] == [o["text"] for o in base_mc["options"]]
    assert all(abs(a["logprob"] - b["logprob"]) > 1e-4 for a, b in zip(tuned_mc["options"], base_mc["options"]))


def test_a_malformed_truthfulqa_file_exits_1_before_loading_a_model(tmp_path):
    bad = tmp_path / "tqa.csv"
    bad.write_text("Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
                   "A,B,Q one?,Best,Good,Bad,S\nA,B,Q two?,Best\n")
    result = run_cli("--truthfulqa", str(bad), "--limit", "1")
    assert result.returncode == 1
    assert f"Error: {bad}:3: expected 7 fields, found 4" in result.stderr and result.stdout == ""


def test_an_output_naming_an_input_or_the_other_output_is_refused_before_the_run(tmp_path):
    from click.testing import CliRunner

    from your_ai.cli import main

    suite = tmp_path / "suite.json"
    suite.write_text("{}")  # refused before it is read
    cases = ((["--suite", str(suite), "--output", str(suite)], f"--output {suite} is the --suite file as well"),
             (["--truthfulqa", str(FIXTURE), "--chart", str(FIXTURE)], "--chart .* is the --truthfulqa file as well"),
             (["--output", "r.out", "--chart", "./r.out"], r"--chart \./r\.out is the --output file as well"))
    for flags, named in cases:
        result = CliRunner().invoke(main, ["validate", "--model", str(tmp_path / "no-model"), *flags])
        assert result.exit_code == 2, result.output
        assert re.fullmatch(f"Error: {named}; give --\\w+ a path of its own\n", result.output), result.output
    assert suite.read_text() == "{}" and FIXTURE.is_file()


def test_usage_model_and_suite_errors(tmp_path):
    from click.testing import CliRunner

    from your_ai.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["validate", "--compare", "--limit", "1"])
    assert result.exit_code == 2 and "--compare needs --checkpoint" in result.output

    missing = tmp_path / "no-such-model"
    result = runner.invoke(main, ["validate", "--model", str(missing), "--limit", "1"])
    assert result.exit_code == 1 and f"model path '{missing}' does not exist" in result.output

    result = runner.invoke(main, ["validate", "--checkpoint", str(tmp_path), "--limit", "1"])
    assert result.exit_code == 1 and "is not a LoRA adapter folder" in result.output

    suite = tmp_path / "suite.json"
    suite.write_text('{"categories": {}}')
    result = runner.invoke(main, ["validate", "--suite", str(suite)])
    assert result.exit_code == 1 and f"Error: {suite}: missing 'rules'" in result.output

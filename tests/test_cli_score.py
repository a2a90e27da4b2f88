"""`your-ai score` as a user runs it: real subprocesses, exit codes, JSON output, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from your_ai.objective.scoring import score_document

NOTEBOOK = "Lab notebook, 14 March 1956. Measurements of sample 7: 78.2 and 78.4 C. Scan of the original page."
PRESS = "Press release. The World Health Organization (WHO) says experts agree and studies show it works."


def run_score(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "your_ai", "score", *args],
        capture_output=True, text=True, timeout=120, env=None if env is None else {**os.environ, **env},
    )


def write_jsonl(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_text_json_matches_the_library():
    result = run_score(PRESS, "--year", "2024", "--source-type", "press_release", "--source", "WHO",
                       "--url", "https://www.who.int/news", "--publisher", "World Health Organization", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    expected = score_document(PRESS, {"year": 2024, "source_type": "press_release", "source": "WHO",
                                      "url": "https://www.who.int/news", "publisher": "World Health Organization"})
    assert data["auth_weight"] == expected.authority_weight >= 0.85
    assert data["prov_entropy"] == expected.provenance_entropy
    assert data["distrust"] == pytest.approx(expected.distrust)
    assert data["breakdown"]["authority"]["source_type"]["type"] == "official"
    assert set(data["breakdown"]["authority"]["institutional"]["markers"]["WHO"]["found_in"]) == {"text", "source", "url", "publisher"}


def test_text_table_shows_scores_and_breakdown():
    result = run_score(NOTEBOOK)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label in ("authority weight", "provenance entropy", "distrust", "primary-source markers",
                  "scan / facsimile", "Shannon entropy", "inferred 1956"):
        assert label in out, label
    expected = score_document(NOTEBOOK)
    assert f"{expected.provenance_entropy:.4f}" in out


def test_usage_errors_exit_2(tmp_path):
    nothing = run_score()
    assert nothing.returncode == 2 and "TEXT" in nothing.stderr
    path = write_jsonl(tmp_path / "docs.jsonl", [json.dumps({"text": NOTEBOOK})])
    both = run_score(NOTEBOOK, "--file", str(path))
    assert both.returncode == 2 and "not both" in both.stderr
    flags = run_score("--file", str(path), "--year", "1950")
    assert flags.returncode == 2 and "--year" in flags.stderr


def test_file_json_lines_for_every_record_kind_with_carried_values(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [
        json.dumps({"text": NOTEBOOK, "year": 1956, "source_type": "lab_notebook"}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "Is it safe?"},
                                 {"role": "assistant", "content": PRESS}], "year": "2024"}),
        json.dumps({"prompt": "Summarise.", "completion": PRESS, "auth_weight": 0.5, "prov_entropy": 3.0}),
    ])
    result = run_score("--file", str(path), "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["line"] for row in rows] == [1, 3, 4]
    assert set(rows[0]) == {"line", "auth_weight", "prov_entropy", "distrust", "breakdown", "carried"}
    assert rows[0]["auth_weight"] <= 0.05 and 8.0 <= rows[0]["prov_entropy"] <= 10.0
    assert rows[1]["breakdown"]["year"] == {"value": 2024, "from": "metadata", "era": "post-1995"}
    assert rows[1]["auth_weight"] == score_document("Is it safe?\n" + PRESS, {"year": 2024}).authority_weight
    assert rows[0]["carried"] is None and rows[1]["carried"] is None
    assert rows[2]["carried"]["auth_weight"] == 0.5 and rows[2]["carried"]["prov_entropy"] == 3.0
    assert rows[2]["auth_weight"] != 0.5  # the computed value is reported beside the carried one


def test_file_table_labels_computed_and_carried_values(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [
        json.dumps({"text": NOTEBOOK}),
        json.dumps({"text": PRESS, "auth_weight": 0.9, "prov_entropy": 1.0}),
    ])
    result = run_score("--file", str(path), env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.lstrip().startswith("line"))
    assert header.count("computed") == 3 and header.count("carried") == 3
    assert "0.9000" in result.stdout  # the carried w
    assert "Lab notebook, 14 March 1956" in result.stdout


def test_file_table_fits_an_80_column_terminal(tmp_path):
    long_text = "Lab notebook, 14 March 1956. " + "Measurements of sample 7 at the bench. " * 40
    path = write_jsonl(tmp_path / "docs.jsonl", [
        json.dumps({"text": long_text}),
        json.dumps({"text": PRESS, "auth_weight": 0.9, "prov_entropy": 1.0, "source": "WHO " * 30}),
    ])
    result = run_score("--file", str(path), env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    rows = [line for line in lines if line.strip().startswith(("1 ", "2 "))]
    assert len(rows) == 2  # one line per record, its text cut with an ellipsis
    assert "Lab notebook" in rows[0] and rows[0].count("…") == 1
    assert rows[1].split()[-3:] == ["0.9000", "1.0000", "4.58"]  # the carried values, whole


def test_bad_lines_are_reported_with_file_and_line_and_nothing_is_printed(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [
        json.dumps({"text": NOTEBOOK}),
        json.dumps({"text": PRESS}),
        "{not json",
        json.dumps({"text": PRESS, "source": 42}),
    ])
    result = run_score("--file", str(path), "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{path}:3: not valid JSON" in result.stderr
    assert f"{path}:4: source=42 is not a string" in result.stderr


def test_file_scores_go_vertical_when_the_table_cannot_fit(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [
        json.dumps({"text": NOTEBOOK}),
        json.dumps({"text": PRESS, "auth_weight": 0.9, "prov_entropy": 1.0}),
    ])
    result = run_score("--file", str(path), env={"COLUMNS": "50"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 50, result.stdout
    assert [line.split(":")[0] for line in lines if line.startswith("line ")] == ["line 1", "line 2"]
    values = [line.split() for line in lines if line.startswith("  ")]
    assert len(values) == 6 and all("…" not in "".join(value) for value in values)  # every number whole
    assert values[3:] == [["w", values[3][1], "carried", "0.9000"], ["H", values[4][1], "carried", "1.0000"],
                          ["distrust", values[5][1], "carried", "4.58"]]

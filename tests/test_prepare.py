"""The data pipeline: prepare (score, dedupe, balance, split), deduplicate, analyze.

Library calls for the logic, plus real ``python -m your_ai`` subprocesses for what a user sees
(exit codes, stderr, files on disk).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from your_ai.data.analyze import analyze, format_analysis
from your_ai.data.balance import TIERS, plan_balance, split_sizes, tier_index
from your_ai.data.dedup import near_form
from your_ai.data.inputs import PrepareError, expand_inputs
from your_ai.data.prepare import prepare
from your_ai.data.records import DataError
from your_ai.data.scores import SCORE_CHUNK

PATENT = "US Patent {n} filed in {year}. The inventor describes a measurement apparatus; original manuscript."
PRESS = "The WHO announced that experts agree the scientific consensus on item {n} is settled science."


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(row if isinstance(row, str) else json.dumps(row))
            handle.write("\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def carried(n: int, weight: float, entropy: float = 2.0, prefix: str = "doc") -> list[dict]:
    """``n`` distinct documents that already carry their scores."""
    return [
        {"text": f"{prefix} {weight} number {i} about subject {i * 7919 % 1000}", "auth_weight": weight,
         "prov_entropy": entropy, "source_type": prefix}
        for i in range(n)
    ]


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "your_ai", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def shares(records: list[dict]) -> dict[str, float]:
    counts = [0] * len(TIERS)
    for record in records:
        counts[tier_index(record["auth_weight"])] += 1
    return {tier.name: counts[i] / len(records) for i, tier in enumerate(TIERS)}


# --------------------------------------------------------------------------- bad lines


def test_bad_lines_stop_the_run_naming_file_and_line_and_keep_old_outputs(tmp_path):
    raw = write_jsonl(
        tmp_path / "raw.jsonl",
        [
            {"text": "a good document", "year": 1950},
            "{not json",
            {"text": "   "},
            {"text": "weight too high", "auth_weight": 1.2, "prov_entropy": 1.0},
            {"text": "entropy NaN", "auth_weight": 0.2, "prov_entropy": float("nan")},
            {"text": "wrong type", "url": 17},
            {"title": "no text at all"},
            {"text": "another good document", "year": 2020},
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("previous good output\n")

    result = run_cli("prepare", "--input", raw, "--output", out)

    assert result.returncode == 1, result.stderr
    for line, reason in [(2, "not valid JSON"), (3, "text is empty"), (4, "auth_weight=1.2"),
                         (5, "prov_entropy=nan"), (6, "url=17 is not a string"), (7, "no 'text'")]:
        assert f"{raw}:{line}: " in result.stderr and reason in result.stderr, (line, result.stderr)
    assert "6 bad lines" in result.stderr and "--skip-bad" in result.stderr
    assert (out / "train.jsonl").read_text() == "previous good output\n"
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl"]  # no val, no report, no temp files


def test_skip_bad_leaves_bad_lines_out_and_counts_them(tmp_path):
    rows = carried(4, 0.1) + ["[1, 2]", {"text": "x", "auth_weight": -0.5, "prov_entropy": 1.0}]
    raw = write_jsonl(tmp_path / "raw.jsonl", rows)
    errors: list[DataError] = []

    report = prepare([raw], tmp_path / "out", skip_bad=True, balance=False, on_error=errors.append)

    assert report.read == 6 and report.bad == 2
    assert [(e.line, e.reason.split(" ")[0]) for e in errors] == [(5, "expected"), (6, "auth_weight=-0.5")]
    assert report.train + report.val == 4
    assert len(read_jsonl(tmp_path / "out" / "train.jsonl")) + len(read_jsonl(tmp_path / "out" / "val.jsonl")) == 4


# --------------------------------------------------------------------------- duplicates


def test_exact_and_near_duplicates_are_removed(tmp_path):
    raw = write_jsonl(
        tmp_path / "raw.jsonl",
        [
            {"text": "Hello, World! This is a test.", "auth_weight": 0.1, "prov_entropy": 5.0},
            {"text": "Hello, World! This is a test.\r\n", "auth_weight": 0.1, "prov_entropy": 5.0},  # exact
            {"text": "hello   WORLD this is a test", "auth_weight": 0.5, "prov_entropy": 2.0},  # near
            {"text": "Ｈｅｌｌｏ, world — this is a “test”", "auth_weight": 0.8, "prov_entropy": 1.0},  # near (NFKC)
            {"text": "Hello, World! This is another test.", "auth_weight": 0.1, "prov_entropy": 5.0},
        ],
    )
    report = prepare([raw], tmp_path / "out", balance=False, val_fraction=0.0)

    assert (report.exact_duplicates, report.near_duplicates) == (1, 2)
    texts = [r["text"] for r in read_jsonl(tmp_path / "out" / "train.jsonl")]
    assert sorted(texts) == ["Hello, World! This is a test.", "Hello, World! This is another test."]


def test_key_field_defines_exact_duplicates(tmp_path):
    raw = write_jsonl(
        tmp_path / "raw.jsonl",
        [
            {"text": "first wording", "url": "https://a.example/1", "auth_weight": 0.1, "prov_entropy": 5.0},
            {"text": "different wording", "url": "https://a.example/1", "auth_weight": 0.1, "prov_entropy": 5.0},
            {"text": "third", "url": "https://a.example/2", "auth_weight": 0.1, "prov_entropy": 5.0},
        ],
    )
    report = prepare([raw], tmp_path / "out", balance=False, key="url", val_fraction=0.0)
    assert (report.exact_duplicates, report.train) == (1, 2)

    missing = write_jsonl(tmp_path / "missing.jsonl", [{"text": "no url here", "auth_weight": 0.1, "prov_entropy": 5.0}])
    with pytest.raises(PrepareError, match="1 bad line"):
        prepare([missing], tmp_path / "out2", key="url")


def test_deduplicate_command_writes_first_occurrences(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"text": "One fish.", "extra": 1}, {"text": "Two fish"}])
    second = write_jsonl(tmp_path / "b.jsonl", [{"text": "one FISH"}, {"text": "Two fish"}, {"text": "Red fish"}])

    result = run_cli("deduplicate", first, second, "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["read"], report["exact_duplicates"], report["near_duplicates"], report["written"]) == (5, 1, 1, 3)
    output = tmp_path / "a.dedup.jsonl"
    assert report["output"] == str(output)
    assert read_jsonl(output) == [{"text": "One fish.", "extra": 1}, {"text": "Two fish"}, {"text": "Red fish"}]


# --------------------------------------------------------------------------- balance


def test_balance_reaches_the_mix_and_keeps_as_much_as_it_can():
    plan = plan_balance([100, 1000, 1000])
    assert plan.reached and plan.keep == [100, 140, 160]  # the low tier limits: 100 = 25% of 400
    for count, tier in zip(plan.keep, TIERS):
        assert tier.min_share <= count / plan.total <= tier.max_share
    assert "limited by the low tier" in plan.message


def test_balance_says_how_far_it_got_when_the_mix_is_out_of_reach():
    plan = plan_balance([0, 300, 100])
    assert not plan.reached and plan.widened_by >= 25.0  # an empty tier is 25 points below its band
    assert plan.keep[0] == 0 and plan.keep[2] == 100 and plan.keep[1] < 300
    assert "not reachable" in plan.message and "low 0.0%" in plan.message


def test_prepare_output_holds_the_target_mix(tmp_path):
    rows = carried(300, 0.1, 6.0, "low") + carried(500, 0.5, 3.0, "mid") + carried(700, 0.9, 0.5, "high")
    rows += carried(20, 0.0, 9.0, "primary")  # outside every band: counts as low
    raw = write_jsonl(tmp_path / "raw.jsonl", rows)

    report = prepare([raw], tmp_path / "out", seed=3)

    assert report.balance["reached"] and report.outside_bands == 20
    assert report.available == {"low": 320, "medium": 500, "high": 700}
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    val = read_jsonl(tmp_path / "out" / "val.jsonl")
    assert len(train) + len(val) == sum(report.kept.values()) == 1280  # 320 low = 25% of 1280
    for name, share in shares(train + val).items():
        tier = next(t for t in TIERS if t.name == name)
        assert tier.min_share <= share <= tier.max_share, (name, share)
    assert len(val) == 128
    for name, share in shares(val).items():  # the split keeps the mix too
        assert abs(share - shares(train + val)[name]) < 0.01
    assert json.loads((tmp_path / "out" / "prepare_report.json").read_text())["kept"] == report.kept


def test_prepare_reports_a_mix_it_cannot_reach(tmp_path):
    raw = write_jsonl(tmp_path / "raw.jsonl", carried(30, 0.5, 2.0, "mid") + carried(60, 0.9, 1.0, "high"))
    result = run_cli("prepare", "--input", raw, "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "target mix not reachable" in result.stdout and "low 0.0% (target 25-30%)" in result.stdout
    assert "train" in result.stdout and (tmp_path / "out" / "train.jsonl").exists()


# --------------------------------------------------------------------------- split


def test_split_sizes():
    assert split_sizes(100) == (90, 10)
    assert split_sizes(5) == (4, 1)  # at least one val record when there are two or more
    assert split_sizes(100, val_size=30) == (70, 30)
    assert split_sizes(100, train_size=45) == (45, 5)  # val is 10% of train + val
    assert split_sizes(100, train_size=60, val_size=20) == (60, 20)
    assert split_sizes(50, train_size=60, val_size=40) == (30, 20)  # scaled down in proportion
    with pytest.raises(ValueError, match="val_fraction=1.0"):
        split_sizes(10, val_fraction=1.0)



def test_val_fraction_with_val_size_is_refused(tmp_path):
    raw = write_jsonl(tmp_path / "raw.jsonl", carried(10, 0.5))
    for sizes, says in ((["--train-size", "5", "--val-size", "2"], "--train-size and --val-size set"),
                        (["--val-size", "2"], "--val-size sets")):
        result = run_cli("prepare", "--input", raw, "--output", tmp_path / "out", *sizes, "--val-fraction", "0.2")
        assert result.returncode == 2
        assert result.stderr.strip() == (f"Error: --val-fraction cannot go with --val-size: {says} the split; "
                                         f"give one of them")
    assert not (tmp_path / "out").exists()

def test_train_and_val_share_no_text_and_a_seed_fixes_the_outputs(tmp_path):
    rows = carried(60, 0.1) + carried(80, 0.5) + carried(100, 0.85)
    rows += [dict(r, text=r["text"].upper() + "!") for r in rows[:40]]  # near duplicates across tiers
    raw = write_jsonl(tmp_path / "raw.jsonl", rows)
    outputs = {}
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
        prepare([raw], tmp_path / run, seed=seed, val_fraction=0.25)
        outputs[run] = [(tmp_path / run / f"{name}.jsonl").read_bytes() for name in ("train", "val")]

    train, val = (read_jsonl(tmp_path / "a" / f"{name}.jsonl") for name in ("train", "val"))
    assert val and train
    assert not {near_form(r["text"]) for r in train} & {near_form(r["text"]) for r in val}
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["c"]


def test_train_size_and_val_size_are_honoured(tmp_path):
    raw = write_jsonl(tmp_path / "raw.jsonl", carried(50, 0.1) + carried(60, 0.5) + carried(80, 0.85))
    report = prepare([raw], tmp_path / "out", train_size=40, val_size=10)
    assert (report.train, report.val) == (40, 10)
    assert len(read_jsonl(tmp_path / "out" / "train.jsonl")) == 40
    assert len(read_jsonl(tmp_path / "out" / "val.jsonl")) == 10


# --------------------------------------------------------------------------- records


def test_carried_scores_are_kept_and_others_are_scored(tmp_path):
    raw = write_jsonl(
        tmp_path / "raw.jsonl",
        [
            {"text": "Carried document.", "auth_weight": 0.123456789, "prov_entropy": 3.3, "year": 1990,
             "publisher": "Press", "ignored": "not a provenance field"},
            {"text": PATENT.format(n=1, year=1923), "year": 1923, "source_type": "patent",
             "identifier": "US1234567"},
            {"text": PRESS.format(n=1), "year": 2024, "source": "WHO", "source_type": "press_release"},
        ],
    )
    prepare([raw], tmp_path / "out", balance=False, val_fraction=0.0)
    records = {r["text"]: r for r in read_jsonl(tmp_path / "out" / "train.jsonl")}

    assert records["Carried document."] == {
        "text": "Carried document.", "auth_weight": 0.123456789, "prov_entropy": 3.3, "year": 1990,
        "publisher": "Press", "scored": False,
    }
    patent = records[PATENT.format(n=1, year=1923)]
    assert patent["scored"] is True and patent["auth_weight"] <= 0.1 and patent["identifier"] == "US1234567"
    press = records[PRESS.format(n=1)]
    assert press["scored"] is True and press["auth_weight"] >= 0.85
    assert press["prov_entropy"] < patent["prov_entropy"]


def test_chat_and_prompt_records_are_accepted(tmp_path):
    raw = write_jsonl(
        tmp_path / "raw.jsonl",
        [
            {"messages": [{"role": "user", "content": "What did the 1923 patent claim?"},
                          {"role": "assistant", "content": "A measurement apparatus."}], "year": 1923},
            {"prompt": "Summarise the press release.", "completion": "Experts agree.", "auth_weight": 0.9,
             "prov_entropy": 0.5},
        ],
    )
    prepare([raw], tmp_path / "out", balance=False, val_fraction=0.0)
    records = read_jsonl(tmp_path / "out" / "train.jsonl")
    chat = next(r for r in records if "messages" in r)
    prompt = next(r for r in records if "prompt" in r)
    assert chat["messages"][1]["content"] == "A measurement apparatus." and chat["scored"] is True
    assert "text" not in chat and chat["year"] == 1923
    assert (prompt["completion"], prompt["auth_weight"], prompt["scored"]) == ("Experts agree.", 0.9, False)


def test_inputs_may_be_directories_and_globs(tmp_path):
    write_jsonl(tmp_path / "data" / "a.jsonl", carried(3, 0.1, prefix="a"))
    write_jsonl(tmp_path / "data" / "b.jsonl", carried(2, 0.1, prefix="b"))
    (tmp_path / "data" / "notes.txt").write_text("not data")
    assert [p.name for p in expand_inputs([tmp_path / "data"])] == ["a.jsonl", "b.jsonl"]
    assert [p.name for p in expand_inputs([str(tmp_path / "data" / "b*.jsonl")])] == ["b.jsonl"]
    with pytest.raises(PrepareError, match="does not exist"):
        expand_inputs([tmp_path / "nope.jsonl"])


# --------------------------------------------------------------------------- analyze


def test_analyze_json_counts_and_png(tmp_path):
    rows = carried(2, 0.1, 6.0, "patent") + carried(3, 0.5, 2.0, "book") + carried(5, 0.9, 0.5, "news")
    rows.append({"text": PATENT.format(n=9, year=1923), "year": 1923, "source_type": "patent"})
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    plot = tmp_path / "plots" / "dist.png"

    result = run_cli("analyze", data, "--json", "--plot", plot)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["records"] == 11 and report["scored_here"] == 1
    assert {name: tier["count"] for name, tier in report["tiers"].items()} == {"low": 3, "medium": 3, "high": 5}
    assert report["source_types"] == {"news": 5, "patent": 3, "book": 3}
    assert report["distrust"]["min"] == pytest.approx(2.7 * (math.log(1 - 0.5 + 1e-8) + 2.0) ** 2)
    assert any("high authority" in w and "above the target" in w for w in report["warnings"])
    assert sum(row["count"] for row in report["auth_weight"]["histogram"]) == 11
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_text_report_has_bars_and_stops_on_bad_lines(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", carried(4, 0.1) + carried(4, 0.5) + carried(5, 0.85))
    analysis = analyze([data])
    text = format_analysis(analysis)
    assert "low" in text and "#" in text and "Distrust (alpha 2.7)" in text
    assert analysis["warnings"] == []  # 30.8%, 30.8%, 38.5%: within 2 points of every band

    bad = write_jsonl(tmp_path / "bad.jsonl", carried(2, 0.1) + ["oops"])
    with pytest.raises(PrepareError, match="1 bad line"):
        analyze([bad])
    assert analyze([bad], skip_bad=True)["bad"] == 1


def test_scoring_in_several_processes_gives_the_same_outputs(tmp_path):
    years = [1923, 1956, 1988, 2024]
    rows = [{"text": (PATENT if i % 3 else PRESS).format(n=i, year=years[i % 4]), "year": years[i % 4]}
            for i in range(2 * SCORE_CHUNK + 50)]
    raw = write_jsonl(tmp_path / "raw.jsonl", rows)
    one = prepare([raw], tmp_path / "one", workers=1)
    two = prepare([raw], tmp_path / "two", workers=2)
    assert one.scored == two.scored == len(rows)
    for name in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()

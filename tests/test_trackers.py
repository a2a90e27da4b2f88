"""`--report-to`: the metrics JSONL, TensorBoard, wandb (offline) and trackio (local) fed the same records; a
resumed run continues the same tracker run; a tracker asked for but not installed; a tracker that fails."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import write_corpus

from your_ai.train.args import TrainingArgs, TrainingArgsError
from your_ai.train.sinks import MetricsFile, Sinks, parse_report_to, scalars

# A run stopped after 2 of 3 steps, then resumed, reporting everywhere; validation at every step.
TWO_INVOCATIONS = """
from your_ai.train.args import TrainingArgs
from your_ai.train.loop import train
settings = dict(model="tiny", data="data", output_dir="run", lora_rank=4, lora_layers=2, max_seq_length=24,
                batch_size=2, memory_report_interval=1, eval_every=1, device="cpu", max_steps=3,
                report_to="tensorboard,wandb,trackio")
train(TrainingArgs(**settings), stop_after=2)
train(TrainingArgs(output_dir="run", resume=True))
"""


def tracker_env(root: Path) -> dict:
    """Offline wandb and trackio with every directory of theirs under ``root``; WANDB_DIR left unset, so
    wandb writes into the output directory."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WANDB_", "TRACKIO_"))}
    env.update(HOME=str(root / "home"), WANDB_MODE="offline", TRACKIO_DIR=str(root / "trackio"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                        env.get("PYTHONPATH")])))
    return env


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("trackers")
    (root / "data").mkdir()
    write_corpus(root / "data" / "train.jsonl", 8)
    write_corpus(root / "data" / "val.jsonl", 2)
    result = subprocess.run([sys.executable, "-c", TWO_INVOCATIONS], cwd=root, env=tracker_env(root),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the run goes on without it" not in result.stderr, result.stderr[-3000:]
    return root


def jsonl_records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]


def by_step(records: list[dict]) -> dict[int, dict]:
    """The dashboards' values at each step, from the metrics file's records."""
    steps: dict[int, dict] = {}
    for record in records:
        steps.setdefault(record["step"], {}).update(scalars(record))
    return steps


def wandb_records(path: Path):
    """The records of a wandb transaction log (``run-<id>.wandb``): LevelDB log blocks of wandb's protobuf
    ``Record`` messages, after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(folder: Path) -> dict:
    """One offline run folder read back: its id, config, history rows by step, summary and exit code."""
    run = {"history": {}, "summary": {}, "config": {}}
    for record in wandb_records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"] = record.run.run_id
            run["config"] = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            run["history"][row["_step"]] = row
        elif kind == "summary":
            run["summary"].update({item.key: json.loads(item.value_json) for item in record.summary.update
                                   if item.key})
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def test_the_metrics_file_holds_train_and_eval_records_of_both_invocations(reported_run):
    records = jsonl_records(reported_run)
    assert [(r["kind"], r["step"]) for r in records] == [
        ("train", 1), ("eval", 1), ("train", 2), ("eval", 2), ("train", 3), ("eval", 3)]
    assert list((reported_run / "run" / "runs").glob("events.out.tfevents.*"))


def test_wandb_offline_run_holds_the_metrics_settings_and_summary_and_resumes_the_same_run(reported_run):
    folders = sorted((reported_run / "run" / "wandb").glob("offline-run-*"))
    assert len(folders) == 2  # one per invocation, both the same wandb run
    first, second = (wandb_run(folder) for folder in folders)
    stored = json.loads((reported_run / "run" / "trackers.json").read_text())["wandb"]["id"]
    assert first["id"] == second["id"] == stored
    assert sorted(first["history"]) == [1, 2] and sorted(second["history"]) == [3]  # no step logged twice
    expected = by_step(jsonl_records(reported_run))
    for step, values in expected.items():
        row = (first if step < 3 else second)["history"][step]
        assert {"train/loss", "train/learning_rate", "val/loss", "val/cross_entropy"} <= values.keys()
        assert {key: row[key] for key in values} == pytest.approx(values)
    assert first["config"]["lora_rank"] == 4 and first["config"]["report_to"] == "tensorboard,wandb,trackio"
    assert first["config"]["output_dir"] == "run" and first["config"]["max_steps"] == 3
    assert second["summary"]["steps"] == 3 and second["summary"]["resumed_from"] == 2
    assert second["summary"]["final_loss"] == pytest.approx(expected[3]["train/loss"])
    assert first["exit_code"] == second["exit_code"] == 0


def test_trackio_local_storage_holds_the_metrics_in_one_run(reported_run):
    with sqlite3.connect(reported_run / "trackio" / "your-ai.db") as db:
        rows = db.execute("select run_id, run_name, step, metrics from metrics order by id").fetchall()
        config = json.loads(db.execute("select config from configs").fetchone()[0])
    assert {row[0] for row in rows} == {rows[0][0]} and {row[1] for row in rows} == {"run"}  # resumed: one run
    logged: dict[int, dict] = {}
    for _, _, step, metrics in rows:
        values = json.loads(metrics)
        if not any(key.startswith("summary/") for key in values):
            logged.setdefault(step, {}).update(values)
    expected = by_step(jsonl_records(reported_run))
    assert sorted(logged) == [1, 2, 3]
    for step, values in expected.items():
        assert {key: logged[step][key] for key in values} == pytest.approx(values)
    assert config["lora_rank"] == 4
    summary = json.loads(rows[-1][3])
    assert summary["summary/steps"] == 3


def test_a_tracker_that_is_not_installed_fails_before_any_work(tmp_path, tiny_model_dir):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "wandb.py").write_text("raise ImportError('No module named wandb')\n")
    env = tracker_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(fake), env["PYTHONPATH"]])
    result = subprocess.run([sys.executable, "-m", "your_ai", "train", "--model", "tiny", "--output-dir", "run",
                             "--report-to", "tensorboard,wandb"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--report-to wandb" in lines[0] and "pip install 'your-ai[trackers]'" in lines[0]
    assert not (tmp_path / "run").exists()


def test_report_to_reads_a_comma_list():
    assert parse_report_to(None) == ("tensorboard",)
    assert parse_report_to("wandb, TensorBoard,wandb") == ("wandb", "tensorboard")
    assert parse_report_to("tensorboard,trackio", tensorboard=False) == ("trackio",)  # --no-tensorboard
    assert parse_report_to("none") == ()
    for wrong in ("mlflow", "none,wandb", ""):
        with pytest.raises(ValueError, match="--report-to"):
            parse_report_to(wrong)
    with pytest.raises(TrainingArgsError, match="--report-to 'mlflow'"):
        TrainingArgs(report_to="mlflow").validate()


class FailingTracker:
    """A dashboard whose logging breaks (a full disk, a lost connection)."""

    name = "failing"

    def __init__(self):
        self.closed_with = None

    def record(self, record):
        raise ConnectionError("connection lost")

    def summary(self, values):
        raise AssertionError("left out after its failure")

    def close(self, exit_code):
        self.closed_with = exit_code


def test_a_tracker_that_fails_is_left_out_with_one_warning(tmp_path):
    warnings, failing = [], FailingTracker()
    sinks = Sinks([MetricsFile(tmp_path / "metrics.jsonl"), failing], say=warnings.append)
    with sinks:
        for step in (1, 2):
            sinks.record({"kind": "train", "step": step, "loss": 1.0})
        sinks.summary({"steps": 2})
    assert len(warnings) == 1 and "failing could not log (ConnectionError: connection lost)" in warnings[0]
    assert failing.closed_with == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2

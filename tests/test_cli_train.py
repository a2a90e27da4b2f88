"""`your-ai train` as a user runs it: real subprocesses, exit codes and files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_train import write_corpus

FAST = ["--lora-rank", "4", "--max-seq-length", "32", "--batch-size", "2"]


def tiny_unless_named(args) -> list[str]:
    """The tiny model unless the arguments name a model: the fast suite never trains the default model."""
    return list(args) if "--model" in args else ["--model", "tiny", *args]


def run_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "your_ai", "train", *tiny_unless_named(args)], cwd=cwd,
                          capture_output=True, text=True, timeout=240)


def start_train(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "your_ai", "train", *tiny_unless_named(args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_train_writes_a_peft_adapter_metrics_and_tensorboard(tmp_path, tiny_model_dir):
    from peft import PeftModel

    from your_ai.models import load_model, resolve_model

    write_corpus(tmp_path / "corpus.jsonl")
    result = run_train("--data", "corpus.jsonl", "--max-steps", "4", "--memory-report-interval", "2",
                       "--lora-layers", "99", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "models" / "distrust-tiny"
    assert f"Adapter saved to {Path('models') / 'distrust-tiny'}" in result.stdout
    assert "--lora-layers 99 clamped to the model's 4 layers" in result.stdout
    assert "normaliser d_bar =" in result.stdout

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    model = PeftModel.from_pretrained(load_model(resolve_model(config["base_model_name_or_path"])), out)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # trained away from the zero init

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 4]
    for line in lines:
        assert {"loss", "cross_entropy", "distrust", "learning_rate", "grad_norm", "tokens_per_second",
                "peak_memory_gb"} <= line.keys()
        assert line["peak_memory_gb"] > 0 and line["tokens_per_second"] > 0
    assert list((out / "runs").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000004"


def test_bad_line_fails_before_anything_is_loaded_or_written(tmp_path, tiny_model_dir):
    (tmp_path / "bad.jsonl").write_text('{"text": "good"}\n{"text": "x", "prov_entropy": -1, "auth_weight": 0.5}\n')
    result = run_train("--data", "bad.jsonl", cwd=tmp_path)
    assert result.returncode != 0
    assert "bad.jsonl:2: prov_entropy=-1 is out of range" in result.stderr
    assert not (tmp_path / "models").exists()


def test_killed_run_resumes_to_the_end(tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "corpus.jsonl")
    args = ["--data", "corpus.jsonl", "--output-dir", "run", "--max-steps", "60", "--save-every", "10",
            "--no-tensorboard", *FAST]
    process = start_train(*args, cwd=tmp_path)
    latest = tmp_path / "run" / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert latest.exists(), "the run never wrote a checkpoint"
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists(), "the run finished before it was killed"

    resumed = run_train("--output-dir", "run", "--resume", "--no-tensorboard", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from step" in resumed.stdout
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["steps"] == 60 and summary["resumed_from"] >= 10
    assert summary["args"]["lora_rank"] == 4 and summary["args"]["max_seq_length"] == 32


def test_memory_limit_saves_a_checkpoint_and_exits_4(tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "corpus.jsonl")
    result = run_train("--data", "corpus.jsonl", "--output-dir", "run", "--max-memory", "0.01", "--no-tensorboard",
                       *FAST, cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert "went above --max-memory 0.01 GB at step 1" in result.stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000001"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 1

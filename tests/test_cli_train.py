"""`your-ai train` as a user runs it: real subprocesses, exit codes and files."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
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

    from your_ai.model.load import load_model
    from your_ai.model.resolve import resolve_model

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
    assert "Tokenized cache reused: " in resumed.stdout  # the killed run built it before its first step
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


def _wait_for_metrics(path: Path, lines: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run wrote fewer than {lines} metrics lines (exit code {process.poll()})")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_gives_the_uninterrupted_adapter(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    write_corpus(tmp_path / "corpus.jsonl")
    args = ["--data", "corpus.jsonl", "--max-steps", "40", "--save-every", "100", "--memory-report-interval", "1",
            "--no-tensorboard", "--device", "cpu", *FAST]
    whole = start_train(*args, "--output-dir", "whole", cwd=tmp_path)  # the same run, never interrupted
    process = start_train(*args, "--output-dir", "run", cwd=tmp_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    _wait_for_metrics(metrics, 2, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    stopped = json.loads(metrics.read_text().splitlines()[-1])["step"]  # the step in progress was finished
    assert 2 <= stopped < 40
    state = json.loads((tmp_path / "run" / "checkpoints" / f"step-{stopped:06d}" / "trainer_state.json").read_text())
    assert state["step"] == stopped
    assert f"Stopped by SIGTERM at step {stopped} of 40" in out
    command = out.split("Continue with: ", 1)[1].splitlines()[0]
    assert command == "your-ai train --model tiny --output-dir run --resume --device cpu --no-tensorboard"
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()

    resumed = run_train(*shlex.split(command)[2:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from step {stopped}" in resumed.stdout
    whole.communicate(timeout=240)
    assert whole.returncode == 0
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.slow
def test_a_second_ctrl_c_does_not_cut_the_checkpoint_short(tmp_path, tiny_model_dir):
    from your_ai.train.outputs import find_resumable_checkpoint

    write_corpus(tmp_path / "corpus.jsonl")
    process = start_train("--data", "corpus.jsonl", "--output-dir", "run", "--max-steps", "40", "--save-every",
                          "100", "--memory-report-interval", "1", "--no-tensorboard", *FAST, cwd=tmp_path)
    _wait_for_metrics(tmp_path / "run" / "metrics.jsonl", 1, process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "SIGINT: finishing this step, then saving a checkpoint" in err and "Aborted" not in err
    point = find_resumable_checkpoint(tmp_path / "run")
    assert point.checkpoint is not None and not point.damaged and not point.notes
    assert f"Stopped by SIGINT at step {int(point.checkpoint.name[5:])} of 40" in out


@pytest.mark.slow
def test_training_twice_into_the_default_directory_says_what_to_do(tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "corpus.jsonl")
    args = ["--data", "corpus.jsonl", "--max-steps", "2", "--no-tensorboard", *FAST]
    assert run_train(*args, cwd=tmp_path).returncode == 0
    adapter = (tmp_path / "models" / "distrust-tiny" / "adapter_model.safetensors").read_bytes()
    second = run_train(*args, cwd=tmp_path)
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"Error: {Path('models') / 'distrust-tiny'} already holds a training run (finished 2 of 2 steps); continue "
        f"it with --resume, start it over with --overwrite (removes its adapter, checkpoints, metrics and best/), "
        f"or pass another --output-dir")
    resumed = run_train("--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{Path('models') / 'distrust-tiny'} already finished 2 of 2 steps; nothing to do" in resumed.stdout
    assert "Trained" not in resumed.stdout
    assert (tmp_path / "models" / "distrust-tiny" / "adapter_model.safetensors").read_bytes() == adapter


@pytest.mark.slow
def test_flags_that_cannot_work_are_refused_before_training(tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "corpus.jsonl")
    both = run_train("--data", "corpus.jsonl", "--profile", "p.json", "--auto-optimize", cwd=tmp_path)
    assert both.returncode == 2
    assert "--profile and --auto-optimize both choose the hardware profile; give one of them" in both.stderr
    rank = run_train("--data", "corpus.jsonl", "--lora-rank", "20000", cwd=tmp_path)
    assert rank.returncode == 2
    assert rank.stderr.strip() == ("Error: --lora-rank 20000 is larger than the smallest adapted dimension "
                                   "(k_proj out 128 of model tiny); use at most 128")
    assert not (tmp_path / "models").exists()


def test_a_run_follows_the_users_umask(tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "corpus.jsonl")
    proc = subprocess.run([sys.executable, "-m", "your_ai", "train", "--model", "tiny", "--data", "corpus.jsonl",
                           "--output-dir", "run", "--max-steps", "2", "--save-every", "1", "--no-tensorboard", *FAST],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240, umask=0o022)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    assert (run / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o644  # safetensors writes 0600
    checkpoint = run / "checkpoints" / "step-000002"
    assert checkpoint.stat().st_mode & 0o777 == 0o755  # tempfile.mkdtemp makes 0700
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in checkpoint.iterdir())


def test_a_seed_the_random_generators_cannot_take_is_refused_by_the_flag():
    from click.testing import CliRunner

    from your_ai.cli import main

    for seed in ("-3", str(2**64)):
        result = CliRunner().invoke(main, ["train", "--model", "tiny", "--seed", seed])
        assert result.exit_code == 2 and f"Invalid value for '--seed': {seed} is not in the range" in result.output

"""The fit test (`benchmark --fit-test`): one real LoRA run, exactly one result line."""

import json
import os
import subprocess
import sys

import pytest

from your_ai.fit.faults import FAULT_ENV, injected_fault
from your_ai.fit.plan import FitConfig
from your_ai.fit.result import RESULT_PREFIX, FitResult, parse_result_line
from your_ai.model.presets import params_label


def fit_test(*args, **env):
    proc = subprocess.run([sys.executable, "-m", "your_ai", "benchmark", "--fit-test", *args, "--device", "cpu"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(RESULT_PREFIX), (proc.stdout, proc.stderr)
    return proc, json.loads(lines[0][len(RESULT_PREFIX):])


def test_out_of_memory_error_is_reported_as_oom(tiny_model_dir):
    proc, result = fit_test("tiny", **{FAULT_ENV: "oom"})
    assert proc.returncode == 1
    assert result["status"] == "oom" and result["success"] is False
    assert result["error"].startswith("OutOfMemoryError: out of memory (YOUR_AI_FIT_TEST_FAULT=oom")
    assert result["peak_host_gb"] > 0


def test_fault_selectors():
    config = FitConfig(batch_size=4, lora_rank=64, lora_layers=16)
    env = {FAULT_ENV: "sleep:5@llama-8b, oom@batch=4, segfault"}
    assert injected_fault("llama-8b", config, env) == "sleep:5"
    assert injected_fault("tiny", config, env) == "oom"
    assert injected_fault("tiny", FitConfig(batch_size=2), env) == "segfault"
    assert injected_fault("tiny", config, {FAULT_ENV: "error@rank=128"}) is None
    assert injected_fault("tiny", config, {}) is None
    for bad in ("explode", "sleep", "sleep:soon", "oom@size=3", "exit:x"):
        with pytest.raises(ValueError, match=f"{FAULT_ENV}="):
            injected_fault("tiny", config, {FAULT_ENV: bad})


def test_result_line_parsing_and_config_checks():
    line = RESULT_PREFIX + json.dumps({"model": "m", "preset": None, "model_name": "m", "params": None, "config": {},
                                       "device": "cpu", "max_memory_gb": 1.0, "synthetic": False, "status": "pass",
                                       "unknown": 1})
    parsed = parse_result_line(f"noise\n{line}\nmore")
    assert isinstance(parsed, FitResult) and parsed.status == "pass" and "unknown" not in parsed.to_dict()
    assert "rank" not in parsed.to_dict() and parsed.to_dict()["exit_code"] is None  # optional fields only when set
    assert parse_result_line(f"{RESULT_PREFIX}{{broken\n") is None
    assert parse_result_line("") is None
    assert FitConfig(seq_length=128, grad_checkpoint=True).cli_args() == [
        "--batch-size", "2", "--lora-rank", "64", "--lora-layers", "16", "--steps", "5", "--max-seq-length", "128",
        "--grad-checkpoint"]
    with pytest.raises(ValueError, match="batch_size=0 must be a positive integer"):
        FitConfig(batch_size=0)
    assert [params_label(n) for n in (3_950_848, 7_241_732_096, 70_553_706_496, 1_500_000_000)] == [
        "4M", "7.2B", "71B", "1.5B"]


def test_the_fit_test_times_the_optimizer_step_train_runs(monkeypatch, tiny_model_dir):
    from your_ai.fit.child import run_fit_test
    from your_ai.train import step
    from your_ai.train.defaults import DEFAULTS

    calls, real = [], step.optimizer_step
    monkeypatch.setattr(step, "optimizer_step", lambda *args: calls.append(args) or real(*args))  # counts, then runs
    result = run_fit_test("tiny", 8.0, "cpu", FitConfig(lora_rank=4, steps=3, seq_length=32), synthetic=True)
    assert result.status == "pass" and len(result.step_times_s) == 3 and len(calls) == 3
    _, micro_batches, optimizer, scheduler, max_grad_norm = calls[0]
    assert len(micro_batches) == 1 and scheduler is not None and max_grad_norm == DEFAULTS["max_grad_norm"]
    assert scheduler.get_last_lr()[0] < optimizer.defaults["lr"]  # warmed up, then decayed over the steps

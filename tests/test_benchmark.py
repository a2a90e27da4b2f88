"""`your-ai benchmark` end to end: real subprocesses, real exit statuses, real files.

The tiny model is placed in a hub cache under the presets' hub ids (it has 4 layers, so the
fit test's 16 LoRA layers are clamped). Failures are provoked with the test-only
YOUR_AI_FIT_TEST_FAULT variable; each benchmark run checks several things at once.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import psutil
import pytest
from hub_cache import add_snapshot, fake_commit

from your_ai.fit.benchmark import (
    SAFETY_ENV,
    benchmark_candidates,
    candidate,
    run_benchmark,
)
from your_ai.fit.faults import FAULT_ENV
from your_ai.fit.plan import FitConfig, FitTest
from your_ai.fit.result import result_text
from your_ai.model.presets import PRESETS

FAST = ["--device", "cpu", "--max-seq-length", "64", "--steps", "2"]
FAST_CONFIG = FitConfig(seq_length=64, steps=2)


def hub_id(preset):
    return PRESETS[preset].hub_id


def make_cache(root, tiny_model_dir, presets):
    cache = root / "hub"
    cache.mkdir()
    for preset in presets:
        add_snapshot(cache, hub_id(preset), tiny_model_dir, fake_commit(preset))
    return cache


def run_cli(args, **env):
    return subprocess.run([sys.executable, "-m", "your_ai", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def line_for(stdout, preset):
    (line,) = [line for line in stdout.splitlines() if re.match(rf"\[\d+/\d+\] {preset} ", line)]
    return line


# ---------------------------------------------------------------------------- run A: the five presets

@pytest.fixture(scope="module")
def run_a(tmp_path_factory, tiny_model_dir):
    """Default presets: pass, crash (SIGSEGV), not available, killed by SIGKILL (-> OOM, stops), skipped;
    then the quick optimize sweep of the model that passed (rank 128 and batch 4 made to run out of memory)."""
    root = tmp_path_factory.mktemp("bench-a")
    cache = make_cache(root, tiny_model_dir, ["hermes-mistral-7b", "dolphin-8b", "r1-distill-14b", "hermes-70b"])
    log, output = root / "benchmark_log.jsonl", root / "out" / "results.json"
    log.write_text(json.dumps({"event": "from an earlier run"}) + "\n")
    started = time.monotonic()
    proc = run_cli(["benchmark", *FAST, "--output", str(output), "--log", str(log), "--optimize", "--quick"],
                   HF_HUB_CACHE=str(cache),
                   **{FAULT_ENV: "segfault@dolphin-8b,sigkill@r1-distill-14b,oom@rank=128,oom@batch=4"})
    print(f"run A took {time.monotonic() - started:.1f} s")
    return proc, json.loads(output.read_text()), read_log(log)


def test_lines_per_model_and_the_stop_rule(run_a):
    proc, _, _ = run_a
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\[1/5\] hermes-mistral-7b    \(7B  \) \.\.\. ✓ Pass \(\d+\.\d GB peak\) \[est \d+\.\d GB\]\n"
                     r"      \[Memory released - subprocess exited\]$", out, re.MULTILINE), out
    assert line_for(out, "dolphin-8b").startswith("[2/5] dolphin-8b           (8B  ) ... ✗ Crashed (crashed with SIGSEGV")
    not_found = line_for(out, "llama-8b")
    assert not_found.startswith("[3/5] llama-8b             (8B  ) ... ✗ Model not available — would need ~")
    assert not_found.endswith(f"; `hf download {hub_id('llama-8b')}`")
    oom = line_for(out, "r1-distill-14b")
    assert oom.startswith("[4/5] r1-distill-14b       (14B ) ... ✗ OOM (killed by SIGKILL, most likely by the "
                          "operating system's out-of-memory killer"), oom
    assert line_for(out, "hermes-70b") == (
        "[5/5] hermes-70b           (70B ) ... - Skipped (r1-distill-14b ran out of memory; larger models will not fit)")
    assert out.count("[Memory released - subprocess exited]") == 4
    assert "Recommended: hermes-mistral-7b (largest model that fits)" in out
    assert "Tested 4, passed 1, failed 3, skipped 1." in out


def test_json_output(run_a):
    _, report, _ = run_a
    assert report["recommended"] == "hermes-mistral-7b"
    assert report["device"] == "cpu" and report["synthetic"] is False and report["max_memory_gb"] > 0
    models = {m["preset"]: m for m in report["models"]}
    assert [m["preset"] for m in report["models"]] == ["hermes-mistral-7b", "dolphin-8b", "llama-8b", "r1-distill-14b"]
    assert [m["status"] for m in report["models"]] == ["pass", "crashed", "not_available", "oom"]
    assert [s["preset"] for s in report["skipped"]] == ["hermes-70b"]
    for model in report["models"]:
        for key in ("preset", "model_name", "params", "success", "status", "peak_memory_gb", "estimate_gb", "error",
                    "optimal_config", "config", "device", "synthetic"):
            assert key in model, key
    passed = models["hermes-mistral-7b"]
    assert passed["success"] is True and passed["error"] is None
    assert passed["model_name"] == hub_id("hermes-mistral-7b")
    assert passed["config"] == {"batch_size": 2, "lora_rank": 64, "lora_layers": 4, "seq_length": 64, "steps": 2,
                                "dtype": "float32", "grad_checkpoint": False, "step_mode": "fast", "quantize": None}
    assert "--lora-layers 16 clamped to the model's 4 layers" in passed["notes"]
    assert 0.1 < passed["peak_memory_gb"] == passed["peak_host_gb"] < 8
    assert passed["step_time_s"] > 0 and passed["tokens_per_s"] == pytest.approx(2 * 64 / passed["step_time_s"], rel=0.01)
    # the estimate comes from the model on disk (the tiny one), not from the preset's 7B shape
    assert passed["estimate_gb"] < 1
    assert models["dolphin-8b"]["signal"] == "SIGSEGV"
    missing = models["llama-8b"]
    assert missing["download_command"] == f"hf download {hub_id('llama-8b')}"
    assert f"hf download {hub_id('llama-8b')}" in missing["error"]
    assert missing["estimate_gb"] > 10  # the preset's 8B shape
    killed = models["r1-distill-14b"]
    assert killed["signal"] == "SIGKILL" and killed["peak_host_gb"] > 0.01


def test_optimize_fills_the_optimal_config(run_a):
    proc, report, _ = run_a
    assert "Optimizing hermes-mistral-7b (quick grid)" in proc.stdout
    best = report["models"][0]["optimal_config"]
    assert {k: best[k] for k in ("batch_size", "lora_rank", "lora_alpha", "lora_layers")} == {
        "batch_size": 2, "lora_rank": 64, "lora_alpha": 128, "lora_layers": 4}
    assert best["tokens_per_s"] > 0 and best["peak_memory_gb"] > 0.1
    profile = json.loads(open(best["profile"]).read())
    assert profile["model"] == "hermes-mistral-7b" and profile["steps"] == 15
    assert [r["status"] for r in profile["results"]] == ["pass", "oom", "oom", "skipped", "skipped", "skipped"]
    assert all(m["optimal_config"] is None for m in report["models"][1:])


def test_event_log(run_a):
    _, report, records = run_a
    assert records[0] == {"event": "from an earlier run"}  # appended, never truncated
    events = [r for r in records[1:]]
    assert all(r["run_id"] == report["run_id"] and r["timestamp"] > 0 for r in events)
    names = [r["event"] for r in events]
    assert names == ["benchmark_start"] + ["model_start", "subprocess_start", "subprocess_success"] + [
        "model_start", "subprocess_start", "subprocess_failed"] * 3 + [
        "optimize_start", "optimize_complete", "benchmark_complete"]
    success = events[3]
    assert success["preset"] == "hermes-mistral-7b" and success["exit_code"] == 0 and success["last_phase"] == "done"
    assert len(success["stdout_head"]) == 1 and success["stdout_head"][0].startswith("FIT_TEST_RESULT:{")
    failed = [r for r in events if r["event"] == "subprocess_failed"]
    assert [(r["preset"], r["status"], r["signal"]) for r in failed] == [
        ("dolphin-8b", "crashed", "SIGSEGV"), ("llama-8b", "not_available", None), ("r1-distill-14b", "oom", "SIGKILL")]
    assert failed[1]["exit_code"] == 1 and failed[0]["exit_code"] is None
    assert failed[2]["last_phase"] == "resolving"  # the fit test's phase lines reached the parent
    complete = events[-1]
    assert (complete["tested"], complete["passed"], complete["failed"], complete["skipped"]) == (4, 1, 3, 1)


# ---------------------------------------------------------------------------- run B: errors and the budget

def test_errors_do_not_stop_but_over_budget_does(tmp_path, tiny_model_dir):
    cache = make_cache(tmp_path, tiny_model_dir, ["hermes-mistral-7b", "dolphin-8b", "llama-8b", "r1-distill-14b"])
    log = tmp_path / "log.jsonl"
    proc = run_cli(["benchmark", *FAST, "--models", "r1-distill-14b,dolphin-8b,llama-8b,hermes-mistral-7b",
                    "--max-memory", "0.01", "--force", "--log", str(log)],
                   HF_HUB_CACHE=str(cache), **{FAULT_ENV: "error@hermes-mistral-7b,exit:3@dolphin-8b"})
    out = proc.stdout
    assert proc.returncode == 1, proc.stderr
    assert line_for(out, "hermes-mistral-7b").startswith(
        "[1/4] hermes-mistral-7b    (7B  ) ... ✗ Error: RuntimeError: injected failure (YOUR_AI_FIT_TEST_FAULT=error")
    # no result line and a non-zero exit: the child's last stderr line is the message
    assert line_for(out, "dolphin-8b").startswith(
        "[2/4] dolphin-8b           (8B  ) ... ✗ Error: injected exit with code 3")
    assert re.match(r"\[3/4\] llama-8b             \(8B  \) \.\.\. ✗ Over budget \(peak \d+\.\d\d GB is over the "
                    r"0\.01 GB budget\) \[est", line_for(out, "llama-8b"))
    assert line_for(out, "r1-distill-14b").endswith("- Skipped (llama-8b went over the budget; larger models will not fit)")
    assert "No models passed benchmark." in out and "not found locally" not in out
    failed = [r for r in read_log(log) if r["event"] == "subprocess_failed"]
    assert [(r["status"], r["exit_code"]) for r in failed] == [("error", 1), ("error", 3), ("over_budget", 1)]
    assert "injected exit with code 3" in failed[1]["stderr_tail"][-1]


def test_nothing_downloaded_lists_the_options_and_force_skips_the_safety_stop(hub_cache, monkeypatch):
    monkeypatch.setenv(SAFETY_ENV, "1000000")
    stream = io.StringIO()
    report = run_benchmark(["llama-8b"], device="cpu", force=True, log_path=None, config=FAST_CONFIG, stream=stream)
    out = stream.getvalue()
    assert report["recommended"] is None
    assert "SAFETY STOP" not in out
    assert out.count("✗ Model not available") == 1
    assert "No models passed benchmark." in out
    assert "⚠️  1 model(s) not found locally" in out
    assert f"       hf download {hub_id('llama-8b')}" in out
    assert "your-ai benchmark --models /path/to/model,ORG/NAME (or --cached)" in out
    assert "your-ai benchmark --synthetic" in out


# ---------------------------------------------------------------------------- in process: no or one child

def test_safety_stop(tmp_path, monkeypatch):
    monkeypatch.setenv(SAFETY_ENV, "1000000")
    log, stream = tmp_path / "log.jsonl", io.StringIO()
    report = run_benchmark(["hermes-mistral-7b", "llama-8b"], device="cpu", log_path=log, stream=stream,
                           output=tmp_path / "r.json")
    out = stream.getvalue()
    assert "SAFETY STOP: only" in out and "under 1e+06 GB" in out and "stopping before hermes-mistral-7b" in out
    assert "[1/2] hermes-mistral-7b    (7B  ) ... - Skipped (safety stop)" in out
    assert "[2/2] llama-8b             (8B  ) ... - Skipped (safety stop)" in out
    assert report["safety_stop"] is True and report["models"] == [] and len(report["skipped"]) == 2
    events = read_log(log)
    assert [e["event"] for e in events] == ["benchmark_start", "safety_stop", "benchmark_complete"]
    assert events[1]["min_available_gb"] == 1e6 and events[1]["available_gb"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["skipped"][0]["reason"] == "safety stop"


def test_bad_safety_threshold_is_named(monkeypatch):
    monkeypatch.setenv(SAFETY_ENV, "lots")
    with pytest.raises(ValueError, match="YOUR_AI_SAFETY_MIN_AVAILABLE_GB='lots' is not a non-negative number of GB"):
        run_benchmark(["tiny"], device="cpu", log_path=None, stream=io.StringIO())


def test_weights_over_the_budget_are_not_loaded(tmp_path, hub_cache):
    hub_cache.add(hub_id("hermes-mistral-7b"))
    log, stream = tmp_path / "log.jsonl", io.StringIO()
    report = run_benchmark(["hermes-mistral-7b", "llama-8b"], device="cpu", max_memory_gb=0.01, log_path=log,
                           stream=stream)
    out = stream.getvalue()
    assert "✗ Over budget (the weights alone need 0.02 GB > 0.01 GB budget; not loaded" in out
    assert "- Skipped (hermes-mistral-7b went over the budget" in out
    assert report["models"][0]["status"] == "over_budget"
    assert "subprocess_start" not in [e["event"] for e in read_log(log)]


def test_timeout_kills_the_process_group(tmp_path, hub_cache, monkeypatch):
    hub_cache.add(hub_id("hermes-mistral-7b"))
    monkeypatch.setenv(FAULT_ENV, "sleep:120")
    stream = io.StringIO()
    started = time.monotonic()
    report = run_benchmark(["hermes-mistral-7b", "llama-8b"], device="cpu", timeout_s=2, config=FAST_CONFIG,
                           log_path=tmp_path / "log.jsonl", stream=stream)
    assert time.monotonic() - started < 60
    out = stream.getvalue()
    assert re.search(r"\[1/2\] hermes-mistral-7b    \(7B  \) \.\.\. ✗ Timeout \(no result within 2 s.*process group "
                     r"killed\)", out), out
    assert "      [Memory released - subprocess killed]" in out
    assert report["models"][0]["status"] == "timeout"
    assert len(report["models"]) == 2 and report["skipped"] == []  # a timeout does not stop the run
    events = read_log(tmp_path / "log.jsonl")
    failed = [e for e in events if e["event"] == "subprocess_failed"][0]
    assert failed["timed_out"] is True and failed["signal"] == "SIGKILL"
    child = [e for e in events if e["event"] == "subprocess_start"][0]["pid"]
    assert not psutil.pid_exists(child)  # killed and reaped


def test_models_are_tested_smallest_first(hub_cache, tiny_model_dir, tmp_path):
    assert [c.name for c in benchmark_candidates(None)] == [
        "hermes-mistral-7b", "dolphin-8b", "llama-8b", "r1-distill-14b", "hermes-70b"]
    hub_cache.add("someone/tiny-chat")
    deep = tmp_path / "deep-model"  # only a config: the order comes from it, no weights are read
    deep.mkdir()
    (deep / "config.json").write_text(json.dumps(
        json.loads((tiny_model_dir / "config.json").read_text()) | {"num_hidden_layers": 400}))
    mixed = benchmark_candidates(["hermes-70b", "someone/absent", str(deep), "r1-distill-32b", "someone/tiny-chat"])
    assert [(c.label, c.params) for c in mixed] == [
        ("tiny-chat", "4M"), ("deep-model", "291M"), ("r1-distill-32b", "32B"), ("hermes-70b", "70B"), ("absent", "?")]
    assert [c.located for c in mixed] == [True, True, False, False, False]
    assert "hf download someone/absent" in str(mixed[-1].problem)
    by_hub_id = candidate(hub_id("llama-8b"))  # a preset's hub id, not downloaded: the preset's shape
    assert (by_hub_id.label, by_hub_id.params, by_hub_id.located, by_hub_id.problem) == ("llama-8b", "8B", False, None)
    with pytest.raises(ValueError, match="--models nope: 'nope' is not a preset, a directory, or a hub id"):
        benchmark_candidates(["nope"])


# ---------------------------------------------------------------------------- any model, the cached ones

@pytest.mark.slow
def test_hub_ids_and_directories_are_tested_like_presets(tmp_path, hub_cache, tiny_model_dir):
    hub_cache.add("someone/tiny-chat")
    directory = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, directory)
    output = tmp_path / "results.json"
    proc = run_cli(["benchmark", *FAST, "--models", f"someone/absent,someone/tiny-chat,{directory}", "--output",
                    str(output), "--log", str(tmp_path / "log.jsonl")])
    out = proc.stdout
    assert proc.returncode == 0, (out, proc.stderr)
    assert re.search(r"^\[1/3\] tiny-chat            \(4M  \) \.\.\. ✓ Pass \(\d+\.\d GB peak\) \[est \d+\.\d GB\]$",
                     out, re.MULTILINE), out
    assert re.search(r"^\[2/3\] my-model             \(4M  \) \.\.\. ✓ Pass ", out, re.MULTILINE), out
    assert "[3/3] absent               (?   ) ... ✗ Model not available; `hf download someone/absent`" in out
    assert f"Train it with: your-ai train --model {directory}" in out
    report = json.loads(output.read_text())
    assert report["recommended"] == str(directory) and report["alternatives"] == ["someone/tiny-chat"]
    rows = [(m["model"], m["preset"], m["model_name"], m["params"], m["status"]) for m in report["models"]]
    assert rows == [("someone/tiny-chat", None, "someone/tiny-chat", "4M", "pass"),
                    (str(directory), None, str(directory.resolve()), "4M", "pass"),
                    ("someone/absent", None, "someone/absent", None, "not_available")]
    assert report["models"][2]["download_command"] == "hf download someone/absent"


@pytest.mark.slow
def test_cached_tests_every_causal_lm_in_the_cache(tmp_path, hub_cache):
    hub_cache.add("someone/tiny-chat")
    for name, config in (("encoder", '{"architectures": ["BertModel"], "model_type": "bert"}'),
                         ("broken", '{"model_type": "llama",\n "hidden_size": }')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config)
        hub_cache.add(f"someone/{name}", source=tmp_path / name)
    output = tmp_path / "results.json"
    proc = run_cli(["benchmark", "--cached", *FAST, "--output", str(output), "--log", str(tmp_path / "log.jsonl")])
    out = proc.stdout
    assert proc.returncode == 0, (out, proc.stderr)
    assert f"Hugging Face cache {hub_cache.path}: 2 causal LM(s); 1 other repo(s) skipped (not causal LMs)" in out
    assert re.search(r"^\[1/2\] tiny-chat            \(4M  \) \.\.\. ✓ Pass ", out, re.MULTILINE), out
    assert re.search(r"^\[2/2\] broken               \(\?   \) \.\.\. ✗ Error: .*/config\.json:2: not valid JSON",
                     out, re.MULTILINE), out
    assert "encoder" not in out
    report = json.loads(output.read_text())
    assert report["cache"] == {"path": str(hub_cache.path), "models": ["someone/broken", "someone/tiny-chat"],
                               "skipped": ["someone/encoder"]}
    assert [m["status"] for m in report["models"]] == ["pass", "error"]
    assert report["recommended"] == "someone/tiny-chat"
    refused = run_cli(["benchmark", "--cached", "--models", "tiny"])
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "Error: --cached tests the models in the local cache; leave out --models")


def test_result_text_for_synthetic_and_other_statuses():
    base = FitTest("m", "cpu", FitConfig(), 8.0, synthetic=True, estimate_gb=15.14).result("pass")
    base.peak_memory_gb, base.error = 27.83, "boom"
    assert result_text(base) == "✓ Pass (27.8 GB peak) [est 15.1 GB, synthetic]"
    assert result_text(replace(base, status="error", synthetic=False)) == "✗ Error: boom [est 15.1 GB]"
    assert result_text(replace(base, status="not_available", download_command="hf download a/b")) == (
        "✗ Model not available — would need ~15 GB; `hf download a/b`")

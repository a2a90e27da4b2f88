"""`your-ai optimize`: the grid, lightest first, the stop rule, the safety margin and the profile."""

import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from your_ai.fit.faults import FAULT_ENV
from your_ai.fit.profiles import load_profile, profile_path
from your_ai.fit.result import step_time_summary
from your_ai.fit.sweep import (
    FULL_GRID,
    fits,
    format_table,
    grid_configs,
    noisy,
    ranking_within_noise,
    run_optimize,
)
from your_ai.model.presets import PRESETS, TINY


def test_sweep_stops_a_dimension_at_oom_and_saves_the_fastest_fit(tmp_path, tiny_model_dir):
    output = tmp_path / "profile.json"
    proc = subprocess.run(
        [sys.executable, "-m", "your_ai", "optimize", "--model", "tiny", "--quick", "--steps", "4", "--max-seq-length", "32",
         "--device", "cpu", "--max-memory", "8", "--output", str(output), "--synthetic"],
        capture_output=True, text=True, timeout=600, env={**os.environ, FAULT_ENV: "oom@batch=4"},
    )
    out = proc.stdout
    assert proc.returncode == 0, (out, proc.stderr)
    assert "Sweeping 6 configs of tiny (quick grid) on cpu: budget 8.00 GB, 15% safety margin" in out
    assert "Note: LoRA layers 16, 24 clamped to the model's 4 layers" in out
    profile = json.loads(output.read_text())
    rows = {(r["batch_size"], r["lora_rank"]): r for r in profile["results"]}
    assert len(profile["results"]) == 6 and {r["lora_layers"] for r in profile["results"]} == {4}
    estimates = [r["estimate_gb"] for r in profile["results"]]
    assert estimates == sorted(estimates)  # lightest first
    assert rows[(2, 64)]["fits"] and rows[(2, 128)]["fits"]
    assert rows[(4, 64)]["status"] == "oom" and "OutOfMemoryError" in rows[(4, 64)]["error"]
    for key in ((4, 128), (8, 64), (8, 128)):  # at least as heavy as the config that ran out of memory
        assert rows[key]["status"] == "skipped"
        assert rows[key]["error"] == "at least as heavy as batch 4, rank 64, layers 4, which did not fit"
    winner = max((rows[(2, 64)], rows[(2, 128)]), key=lambda r: r["tokens_per_s"])
    assert (profile["batch_size"], profile["lora_rank"]) == (2, winner["lora_rank"])
    assert profile["lora_alpha"] == 2 * profile["lora_rank"] and profile["lora_layers"] == 4
    assert profile["tokens_per_s"] == winner["tokens_per_s"] and profile["peak_memory_gb"] == winner["peak_memory_gb"]
    assert profile["model"] == "tiny" and profile["grid"] == "quick" and profile["steps"] == 4
    assert profile["synthetic"] is True and profile["device"] == "cpu" and profile["max_memory_gb"] == 8
    assert profile["seq_length"] == 32 and profile["safety_margin"] == 0.15 and profile["created_at"]
    assert "Batch  Rank Layers" in out and f"Saved hardware profile to {output}" in out
    assert f"your-ai train --model tiny --profile {output}" in out
    assert load_profile(output)["lora_rank"] == profile["lora_rank"]
    # the spread: 3 timed steps per run (the first warms up), the ranking checked against it
    for row in (rows[(2, 64)], rows[(2, 128)]):
        low, high = row["tokens_per_s_iqr"]
        assert len(row["step_times_s"]) == 3 * row["runs"] and low <= row["tokens_per_s"] <= high
        assert f"{row['tokens_per_s']:.0f} tokens/s (IQR {low:.0f}-{high:.0f})" in out
    ranking = profile["ranking"]
    other = {64: 128, 128: 64}[winner["lora_rank"]]
    assert (ranking["best"]["lora_rank"], ranking["runner_up"]["lora_rank"]) == (winner["lora_rank"], other)
    assert profile["tokens_per_s_iqr"] == winner["tokens_per_s_iqr"]
    again = "running both once more" in out
    assert again == (rows[(2, 64)]["runs"] == rows[(2, 128)]["runs"] == 2)
    assert ranking["within_noise"] == ranking_within_noise(ranking["best"], ranking["runner_up"])
    assert ranking["noisy"] == (noisy(ranking["best"]) or noisy(ranking["runner_up"]))
    assert ("Ranking within noise: batch 2, rank" in out) == ranking["within_noise"]
    assert ("Noisy timing: the steps of" in out) == (ranking["noisy"] and not ranking["within_noise"])
    assert again or not (ranking["within_noise"] or ranking["noisy"])  # checked again before saying so


def test_the_ranking_is_within_noise_when_the_spreads_overlap():
    def row(median, low, high):
        return {"tokens_per_s": median, "tokens_per_s_iqr": [low, high]}

    assert ranking_within_noise(row(310, 300, 320), row(305, 290, 315)) is True
    assert ranking_within_noise(row(310, 300, 320), row(250, 240, 299)) is False
    assert ranking_within_noise(row(310, 300, 320), {"tokens_per_s": 300, "tokens_per_s_iqr": None}) is None
    assert noisy(row(310, 280, 320)) is False and noisy(row(310, 200, 320)) is True
    assert step_time_summary([0.1, 0.3]) == (0.2, None)  # too few steps to tell the spread
    assert step_time_summary([0.1, 0.2, 0.3, 0.4, 0.5]) == (0.3, (0.2, 0.4))


def test_configs_far_over_the_budget_are_not_run(tiny_model_dir):
    stream = io.StringIO()
    outcome = run_optimize("tiny", max_memory_gb=0.2, device="cpu", quick=True, steps=1, stream=stream)
    assert outcome["best"] is None and outcome["path"] is None
    assert all(r["status"] == "skipped" and "is over 1.5x the 0.20 GB budget" in r["error"] for r in outcome["results"])
    assert "No config fits 0.20 GB with the 15% safety margin; no profile saved." in stream.getvalue()
    assert not profile_path("tiny").exists()


def test_unavailable_model_fails_before_sweeping(hub_cache):
    from your_ai.model.errors import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="hf download NousResearch/Hermes-2-Pro-Mistral-7B"):
        run_optimize("hermes-mistral-7b", max_memory_gb=10, device="cpu", quick=True, stream=io.StringIO())


def test_grid_is_sorted_by_estimate_and_deduplicated_after_clamping():
    full, notes = grid_configs(PRESETS["llama-8b"].architecture, "cuda", quick=False, steps=15, seq_length=None)
    assert len(full) == 6 * 4 * 4 and notes == []
    assert [estimate for _, estimate in full] == sorted(estimate for _, estimate in full)
    assert full[0][0].batch_size == min(FULL_GRID["batch_size"]) and full[-1][0].batch_size == max(FULL_GRID["batch_size"])
    tiny, notes = grid_configs(TINY.architecture, "cpu", quick=False, steps=15, seq_length=64)
    assert len(tiny) == 6 * 4 and {config.lora_layers for config, _ in tiny} == {4}
    assert notes == ["LoRA layers 8, 16, 24, 32 clamped to the model's 4 layers (each clamped config is tested once)"]


def test_safety_margin():
    assert fits(1.0, 1.15) and not fits(1.0, 1.149) and not fits(None, 100)
    table = format_table([{"batch_size": 2, "lora_rank": 64, "lora_layers": 4, "estimate_gb": 0.5, "status": "pass",
                           "fits": True, "peak_memory_gb": 1.0, "step_time_s": 0.25, "tokens_per_s": 512.0,
                           "tokens_per_s_iqr": [480.4, 530.0]}])
    assert table.splitlines()[0].split()[-3:] == ["Tokens/s", "IQR", "Status"]
    assert table.splitlines()[2].split() == ["2", "64", "4", "0.50", "1.00", "1.15", "0.250", "512", "480-530", "fits"]


def test_profile_path_and_bad_profiles(tmp_path):
    from your_ai.hardware import config_dir

    assert profile_path("tiny") == config_dir() / "profiles" / "tiny.json"
    assert profile_path("org/some-model").name == "org--some-model.json"
    good = {"model": "tiny", "batch_size": 4, "lora_rank": 16, "lora_alpha": 32, "lora_layers": 4}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(good))
    assert load_profile(path) == good
    path.write_text(json.dumps({**good, "lora_rank": 0}))
    with pytest.raises(ValueError, match=rf"{path}: lora_rank=0 must be a positive integer"):
        load_profile(path)
    path.write_text(json.dumps({**good, "batch_size": 2.5}))
    with pytest.raises(ValueError, match="batch_size=2.5 must be a positive integer"):
        load_profile(path)
    path.write_text('{\n"model": "tiny",\n"batch_size": }')
    with pytest.raises(ValueError, match=rf"{path}:3: not valid JSON"):
        load_profile(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_profile(tmp_path / "missing.json")


@pytest.mark.slow
def test_sweep_of_a_model_directory(tmp_path, tiny_model_dir):
    directory = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, directory)
    output = tmp_path / "profile.json"
    proc = subprocess.run(
        [sys.executable, "-m", "your_ai", "optimize", "--model", str(directory), "--quick", "--steps", "2",
         "--seq-length", "32", "--device", "cpu", "--max-memory", "8", "--output", str(output)],
        capture_output=True, text=True, timeout=600, env={**os.environ, FAULT_ENV: "oom@rank=128,oom@batch=4"},
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert f"Sweeping 6 configs of {directory} (quick grid)" in proc.stdout
    profile = json.loads(output.read_text())
    assert (profile["model"], profile["model_name"], profile["preset"]) == (str(directory), str(directory), None)
    assert [r["status"] for r in profile["results"]] == ["pass", "oom", "oom", "skipped", "skipped", "skipped"]
    assert (profile["batch_size"], profile["lora_rank"], profile["synthetic"]) == (2, 64, False)
    assert f"your-ai train --model {directory} --profile {output}" in proc.stdout

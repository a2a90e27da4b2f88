"""`your-ai recommend`: every preset's estimate against 80% of the memory."""

import json
import os
import subprocess
import sys

import pytest

from your_ai.presets import PRESETS
from your_ai.recommend import format_recommendation, recommend_presets


def test_fits_eighty_percent_of_the_memory():
    report = recommend_presets(memory_gb=100, device="cuda")
    assert report["budget_gb"] == 80 and report["weight_bytes"] == 2
    names = [row["preset"] for row in report["presets"]]
    assert "tiny" not in names and set(names) == set(PRESETS) - {"tiny"}
    counts = [PRESETS[name].architecture.parameter_count() for name in names]
    assert counts == sorted(counts)
    for row in report["presets"]:
        assert row["fits"] == (row["estimate_gb"] <= 80)
    fits = {row["preset"]: row["fits"] for row in report["presets"]}
    assert fits["hermes-mistral-7b"] and fits["r1-distill-14b"] and not fits["hermes-70b"]
    assert report["largest_fit"] == [n for n in names if fits[n]][-1]
    assert f"Largest that fits: {report['largest_fit']}" in format_recommendation(report)


def test_cpu_trains_in_fp32_and_small_memory_fits_nothing():
    cuda = recommend_presets(memory_gb=1, device="cuda")
    cpu = recommend_presets(memory_gb=1, device="cpu")
    assert cpu["presets"][0]["parts_gb"]["weights"] == pytest.approx(2 * cuda["presets"][0]["parts_gb"]["weights"], abs=0.01)
    assert cpu["largest_fit"] is None and cpu["fitting"] == []
    text = format_recommendation(cpu)
    assert "No preset fits 0.8 GB" in text and "fp32 weights" in text
    for row in cpu["presets"]:
        assert f"  {row['preset']:<20}" in text
    bigger_batch = recommend_presets(memory_gb=1, device="cuda", batch_size=8)
    assert bigger_batch["presets"][0]["estimate_gb"] > cuda["presets"][0]["estimate_gb"]
    with pytest.raises(ValueError, match="memory=-1 must be a positive number of GB"):
        recommend_presets(memory_gb=-1, device="cpu")


def test_recommend_command():
    proc = subprocess.run([sys.executable, "-m", "your_ai", "recommend", "--memory", "40", "--json"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["memory_gb"] == 40 and report["budget_gb"] == 32 and report["memory_source"] == "given"
    assert report["config"] == {"batch_size": 2, "lora_rank": 64, "lora_layers": 16, "seq_length": 1024, "quantize": None}

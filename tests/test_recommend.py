"""`your-ai recommend`: every preset's estimate, in the run `train` makes of it, against 80% of the memory."""

import json
import os
import subprocess
import sys

import pytest

from your_ai.fit.recommend import format_recommendation, recommend_presets
from your_ai.model.presets import PRESETS
from your_ai.train.defaults import RULES


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
    bigger_batch = recommend_presets(memory_gb=1, device="cuda", batch_size=16)
    assert bigger_batch["presets"][0]["estimate_gb"] > cuda["presets"][0]["estimate_gb"]
    with pytest.raises(ValueError, match="memory=-1 must be a positive number of GB"):
        recommend_presets(memory_gb=-1, device="cpu")


def test_recommend_command():
    proc = subprocess.run([sys.executable, "-m", "your_ai", "recommend", "--memory", "40", "--json"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["memory_gb"] == 40 and report["budget_gb"] == 32 and report["memory_source"] == "given"
    assert report["config"] == {"batch_size": None, "lora_rank": None, "lora_layers": None, "seq_length": None,
                                "quantize": None}  # nothing given: train's defaults for each model
    rows = {row["preset"]: row for row in report["presets"]}
    device_class = "cpu" if report["device"] == "cpu" else "gpu"
    large, small = RULES[("large", device_class)], RULES[("small", device_class)]
    assert rows["hermes-mistral-7b"]["config"] == {"batch_size": large.batch_size, "lora_rank": large.lora_rank,
                                                   "lora_layers": large.lora_layers, "seq_length": large.max_seq_length}
    assert rows["smollm2-135m"]["config"]["lora_rank"] == small.lora_rank
    given = json.loads(subprocess.run([sys.executable, "-m", "your_ai", "recommend", "--memory", "40", "--json",
                                       "--lora-rank", "64", "--max-seq-length", "512"], capture_output=True, text=True,
                                      timeout=300, env=dict(os.environ)).stdout)
    assert all(row["config"]["lora_rank"] == 64 and row["config"]["seq_length"] == 512 for row in given["presets"])


def test_the_estimate_is_of_the_run_train_makes():
    default_run = recommend_presets(memory_gb=40, device="cpu")  # a 7B model: train's rank 128 does not fit
    assert not default_run["presets"][1]["fits"] and default_run["largest_fit"] == "smollm2-135m"
    text = format_recommendation(default_run)
    assert "Estimated LoRA training memory of `your-ai train --model MODEL` on cpu" in text
    assert "  hermes-mistral-7b        7B    32.2 GB  no    batch 2, rank 128 on 16 layers, 1024 tokens" in text
    lower_rank = recommend_presets(memory_gb=40, device="cpu", lora_rank=64)
    assert lower_rank["largest_fit"] == "hermes-mistral-7b"
    assert "`your-ai train --model MODEL --lora-rank 64` on cpu" in format_recommendation(lower_rank)


def test_recommend_a_hub_id_gives_a_verdict_with_its_estimate(hub_cache):
    hub_cache.add("someone/tiny-chat")
    report = recommend_presets(memory_gb=1, device="cpu", models=["someone/tiny-chat", "llama-8b"])
    assert "presets" not in report
    tiny, llama = report["models"]
    assert (tiny["label"], tiny["params"], tiny["preset"], tiny["model_name"]) == ("tiny-chat", "4M", None,
                                                                                   "someone/tiny-chat")
    assert 0 < tiny["estimate_gb"] < 0.8 and tiny["fits"] is True and tiny["error"] is None
    assert llama["preset"] == "llama-8b" and llama["fits"] is False  # not downloaded: the preset's shape
    proc = subprocess.run([sys.executable, "-m", "your_ai", "recommend", "--memory", "1", "--model",
                           "someone/tiny-chat", "--model", "someone/absent"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 1, proc.stderr  # one model has no estimate
    assert f"  tiny-chat (4M): fits, estimated {tiny['estimate_gb']:.1f} GB of the 0.8 GB budget" in proc.stdout
    assert "  absent: no estimate: model someone/absent is not available locally" in proc.stdout
    assert "`your-ai benchmark --models someone/tiny-chat,someone/absent` measures the real peak" in proc.stdout
    with pytest.raises(ValueError, match="--model nope: 'nope' is not a preset"):
        recommend_presets(memory_gb=1, device="cpu", models=["nope"])


def test_a_larger_preset_in_4_bits_is_named_beside_the_small_one_that_fits():
    report = recommend_presets(memory_gb=16, device="cpu")  # fp32: only smollm2-135m fits; 7B weights alone need 29 GB
    assert report["largest_fit"] == "smollm2-135m"
    assert report["quantized"]["largest_fit"] == "dolphin-8b" and "hermes-mistral-7b" in report["quantized"]["fitting"]
    text = format_recommendation(report)
    assert ("With --quantize 4 (QLoRA: the decoder linear weights in 4-bit NF4) a larger preset fits: dolphin-8b "
            f"(estimated {report['quantized']['estimate_gb']:.1f} GB)") in text
    assert "your-ai train --quantize 4 --model dolphin-8b" in text
    assert "--batch-size" not in text and "tiny" not in text


def test_weights_over_the_budget_even_in_4_bits_point_to_tiny_not_to_a_smaller_batch():
    report = recommend_presets(memory_gb=0.5, device="cpu")  # smollm2-135m's fp32 weights alone need 0.54 GB
    text = format_recommendation(report)
    assert report["largest_fit"] is None and report["quantized"]["largest_fit"] is None
    assert "No preset fits 0.4 GB." in text and "--quantize 4" not in text and "--batch-size" not in text
    assert "The weights alone of the smallest preset, smollm2-135m, need 0.5 GB" in text
    assert "Try the built-in 'tiny' model for a demo (`your-ai train --model tiny`)" in text


def test_a_smaller_batch_is_advised_only_when_the_weights_fit():
    report = recommend_presets(memory_gb=1, device="cuda", batch_size=16, seq_length=4096)
    smallest = report["presets"][0]
    assert report["largest_fit"] is None and smallest["parts_gb"]["weights"] <= report["budget_gb"]
    assert (f"The weights of {smallest['preset']} take {smallest['parts_gb']['weights']:.1f} GB of the budget: "
            "a smaller --batch-size / --max-seq-length may make it fit.") in format_recommendation(report)


def test_a_larger_preset_in_4_bits_is_named_next_to_the_largest_fit():
    text = format_recommendation(recommend_presets(memory_gb=40, device="cpu", lora_rank=64))
    assert "Largest that fits: hermes-mistral-7b" in text
    assert "With --quantize 4 (QLoRA: the decoder linear weights in 4-bit NF4) a larger preset fits: " in text
    quantized = recommend_presets(memory_gb=40, device="cpu", quantize=4, lora_rank=64)
    assert quantized["quantized"] is None and f"fits: {quantized['largest_fit']} (estimated" in text


def test_on_the_mlx_engine_the_estimate_is_mlx_s():
    from your_ai.fit.plan import estimate_for
    from your_ai.fit.recommend import train_config
    from your_ai.step import memory

    pytest.importorskip("mlx.core")
    report = recommend_presets(memory_gb=32, engine="mlx", quantize=4)
    assert (report["device"], report["engine"], report["budget_gb"]) == ("mlx", "mlx", 25.6)
    seven_b = next(row for row in report["presets"] if row["preset"] == "hermes-mistral-7b")
    architecture = PRESETS["hermes-mistral-7b"].architecture
    config = train_config("hermes-mistral-7b", architecture, "mlx", {}, 4)
    assert seven_b["estimate_gb"] == round(estimate_for(architecture, "mlx", config, 25.6).total_gb, 2)
    assert seven_b["parts_gb"]["weights"] == pytest.approx(memory.weight_bytes_total(
        architecture, report["weight_bytes"], 4, "mlx") / memory.GB, abs=1e-3)  # MLX's 4-bit layout, not NF4
    torch_run = recommend_presets(memory_gb=32, device="cpu", quantize=4)  # train's defaults for this machine's CPU
    assert seven_b["config"] == next(r for r in torch_run["presets"] if r["preset"] == "hermes-mistral-7b")["config"]
    text = format_recommendation(report)
    assert "`your-ai train --model MODEL --quantize 4 --engine mlx` on mlx" in text
    assert "decoder linear weights in MLX 4-bit (group size 64)" in text
    assert "`your-ai benchmark --engine mlx` measures the real peak" in text
    with pytest.raises(ValueError, match="--device cuda is a device of the torch engine"):
        recommend_presets(memory_gb=32, device="cuda", engine="mlx")
    proc = subprocess.run([sys.executable, "-m", "your_ai", "recommend", "--engine", "mlx", "--json"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    detected = json.loads(proc.stdout)  # no Metal here: 80% of the system memory, as train --engine mlx budgets
    assert detected["engine"] == "mlx" and detected["budget_source"] == memory.default_budget("mlx")[1]

"""The MLX engine's side of what fits: the engine chosen, the estimator's MLX mode and budget, MPS's dtype,
and a fit test through `benchmark --engine mlx` on the CPU."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from your_ai import hardware
from your_ai.fit.faults import FAULT_ENV
from your_ai.fit.plan import FitConfig, estimate_for, fit_device, step_mode_for
from your_ai.model.presets import PRESETS
from your_ai.step import memory

EIGHT_B = PRESETS["llama-8b"].architecture


def test_training_dtype_on_mps_is_bf16_where_the_mac_supports_it():
    assert hardware.training_dtype("mps", supports_bf16=True) == torch.bfloat16
    assert hardware.training_dtype("mps", supports_bf16=False) == torch.float32
    assert hardware.training_dtype("cuda:0", supports_bf16=True) == torch.bfloat16
    assert hardware.training_dtype("cpu", supports_bf16=True) == torch.float32
    assert hardware.training_dtype("cpu") == torch.float32


def test_pick_engine(monkeypatch):
    assert hardware.pick_engine("torch") == "torch"
    with pytest.raises(ValueError, match="--engine 'jax'"):
        hardware.pick_engine("jax")
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    monkeypatch.setattr(hardware, "mlx_available", lambda: True)
    assert hardware.pick_engine("auto") == "mlx" and hardware.pick_engine(None) == "mlx"
    monkeypatch.setattr(hardware, "mlx_available", lambda: False)
    assert hardware.pick_engine("auto") == "torch"
    with pytest.raises(ValueError, match=r"pip install 'your-ai\[mlx\]'"):
        hardware.pick_engine("mlx")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hardware, "mlx_available", lambda: True)
    assert hardware.pick_engine("auto") == "torch"


def _shape(device, quantize=None, weight_bytes=None):
    return memory.StepShape(EIGHT_B, 2, 1024, 64, 16, device, quantize, weight_bytes)


def test_estimator_mlx_mode():
    pytest.importorskip("mlx.core")
    on_mlx = memory.estimate_training_memory(_shape("mlx", weight_bytes=2))
    on_cuda = memory.estimate_training_memory(_shape("cuda"), fused_kernels=True)
    # the same weights, LoRA state and activations in bf16; no fused kernels, a smaller runtime allowance
    assert on_mlx.parts_gb["weights"] == on_cuda.parts_gb["weights"]
    assert on_mlx.parts_gb["overhead"] == memory.MLX_RUNTIME_OVERHEAD_GB < on_cuda.parts_gb["overhead"]
    assert not on_mlx.assumptions["fused_kernels"]
    assert on_mlx.parts_gb["activations"] > on_cuda.parts_gb["activations"]
    # 4-bit: MLX's layout (4 bits + a bf16 scale and bias per 64 weights), nothing dequantized
    q4 = memory.estimate_training_memory(_shape("mlx", 4, 2))
    linear = EIGHT_B.decoder_linear_parameter_count()
    expected = (EIGHT_B.parameter_count() - linear) * 2 + linear * (0.5 + 4 / 64)
    assert q4.parts_gb["weights"] == pytest.approx(expected / 1e9, abs=1e-3)
    # on the CPU (no Metal) MLX trains in fp32
    assert memory.training_dtype_bytes("mlx") == (2 if memory.mlx_device_info() else 4)


def test_mlx_fit_plan_is_the_plain_step_within_the_mlx_budget():
    pytest.importorskip("mlx.core")
    budget, source = memory.default_budget("mlx")
    if not memory.mlx_device_info():  # no Metal: 80% of the RAM
        assert budget == pytest.approx(0.8 * memory.system_memory_gb()[0]) and source.startswith("80% of")
    mode = step_mode_for(EIGHT_B, "mlx", FitConfig(), budget)
    assert mode.name == "plain" and mode.chunk_tokens == 0 and "MLX forward" in mode.reason
    assert estimate_for(EIGHT_B, "mlx", FitConfig(), budget).total_gb == pytest.approx(mode.estimate_gb, abs=1e-3)
    with pytest.raises(ValueError, match="--step-mode fast is a step of the torch engine"):
        step_mode_for(EIGHT_B, "mlx", FitConfig(step_mode="fast"), budget)
    assert fit_device(None, "mlx") == "mlx" and fit_device("cpu", "torch") == "cpu"
    with pytest.raises(ValueError, match="--device cuda is a device of the torch engine"):
        fit_device("cuda", "mlx")


def _benchmark(tmp_path, *args, fault="", synthetic=True):
    env = {**os.environ, FAULT_ENV: fault}
    return subprocess.run([sys.executable, "-m", "your_ai", "benchmark", "--engine", "mlx", "--steps", "3",
                           "--max-seq-length", "64", "--log", str(tmp_path / "log.jsonl"),
                           *(["--synthetic"] if synthetic else []), *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_benchmark_engine_mlx_synthetic_passes_with_a_measured_peak(tmp_path):
    pytest.importorskip("mlx.core")
    output = tmp_path / "results.json"
    proc = _benchmark(tmp_path, "--models", "tiny", "--output", str(output))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(output.read_text())["models"]
    assert result["status"] == "pass" and result["device"] == "mlx"
    assert result["config"]["step_mode"] == "plain" and result["config"]["dtype"] in ("float32", "bfloat16")
    assert result["peak_device_gb"] > 0 and result["peak_memory_gb"] == result["peak_device_gb"]
    assert result["step_time_s"] > 0 and len(result["step_times_s"]) == 3 and result["tokens_per_s"] > 0
    assert result["estimate_gb"] > 0 and "--engine mlx" in proc.stdout


@pytest.mark.parametrize("fault,message", [("metal-oom", "[metal::malloc]"), ("metal-abort", "Insufficient Memory")])
def test_metal_out_of_memory_is_oom_not_error(tmp_path, fault, message):
    pytest.importorskip("mlx.core")
    output = tmp_path / "results.json"
    proc = _benchmark(tmp_path, "--models", "tiny", "--output", str(output), fault=fault)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (result,) = json.loads(output.read_text())["models"]
    assert result["status"] == "oom" and message in result["error"], result


def test_benchmark_engine_mlx_refuses_a_torch_device_in_one_line(tmp_path):
    pytest.importorskip("mlx.core")
    proc = _benchmark(tmp_path, "--models", "tiny", "--device", "cuda")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "--device cuda is a device of the torch engine" in proc.stderr


def test_the_mac_figures_in_the_docs_are_the_estimators():
    from pathlib import Path

    from your_ai.fit.plan import mlx_step_mode
    from your_ai.model.presets import BENCHMARK_PRESETS

    page = (Path(__file__).resolve().parents[1] / "docs" / "mlx.md").read_text(encoding="utf-8")
    for preset in BENCHMARK_PRESETS:
        figures = []
        for quantize in (None, 4):
            for recompute in (False, True):
                shape = memory.StepShape(preset.architecture, 2, 1024, 64, 16, "mlx", quantize, weight_bytes=2)
                mode = mlx_step_mode(shape, FitConfig(grad_checkpoint=recompute), None)
                figures.append(f"{mode.estimate_gb:.1f} GB")
        assert f"| {preset.name} | {preset.params} | {' | '.join(figures)} |" in page, preset.name


@pytest.mark.real_model
@pytest.mark.slow
def test_benchmark_engine_mlx_on_the_default_model(default_model_snapshot, tmp_path):
    pytest.importorskip("mlx.core")
    output = tmp_path / "results.json"
    proc = _benchmark(tmp_path, "--models", "smollm2-135m", "--output", str(output), "--steps", "2",
                      "--max-seq-length", "32", synthetic=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(output.read_text())["models"]
    assert result["status"] == "pass" and result["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not result["synthetic"] and result["peak_device_gb"] > 0.5  # the 135M fp32 weights are in the peak


def test_auto_optimize_sweeps_on_the_engine_train_runs(monkeypatch, tmp_path):
    pytest.importorskip("mlx.core")
    from your_ai.fit import sweep

    asked = []
    monkeypatch.setattr(sweep, "run_optimize", lambda model, **options: asked.append(options["device"]) or {
        "profile": {"model": model}, "path": str(tmp_path / "profile.json")})
    for engine, device in (("mlx", "mlx"), ("torch", "cpu")):
        sweep.profile_for_training("tiny", profile=None, auto=True, max_memory_gb=None, device="cpu", say=print,
                                   engine=engine)
        assert asked[-1] == device

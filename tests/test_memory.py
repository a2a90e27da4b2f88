"""Memory: peaks are peaks, and the estimator's counts match the models PyTorch and PEFT build."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from your_ai.model.architecture import (
    Architecture,
    architecture_from_config,
    build_random_model,
    read_architecture,
)
from your_ai.model.errors import ModelFileError
from your_ai.model.lora import LoraSettings, apply_lora
from your_ai.model.presets import PRESETS, TINY
from your_ai.step import memory

SMALL_QWEN2 = Architecture("qwen2", 64, 160, 3, 4, 2, 300, 256, tie_word_embeddings=True)
# heads x head_dim is not the hidden size (as in Mistral-Nemo: 32 x 128 against 5120)
WIDE_HEADS = Architecture("mistral", 80, 160, 3, 4, 2, 300, 256, head_dim=32)


@pytest.mark.parametrize("architecture", [TINY.architecture, SMALL_QWEN2, WIDE_HEADS],
                         ids=["llama", "qwen2-tied", "mistral-wide-heads"])
def test_parameter_and_lora_counts_match_real_models(architecture):
    model = build_random_model(architecture)
    assert architecture.parameter_count() == sum(p.numel() for p in model.parameters())
    assert architecture_from_config(model.config) == architecture
    linear = {name: (module.in_features, module.out_features) for name, module in model.named_modules()
              if name.startswith("model.layers.0.") and hasattr(module, "in_features")}
    assert {name.rsplit(".", 1)[1]: shape for name, shape in linear.items()} == architecture.projection_features()
    peft_model, _ = apply_lora(model, LoraSettings(rank=8, layers=2))
    assert memory.lora_parameter_count(architecture, 8, 2) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # asking for more layers than the model has counts the model's layers
    assert memory.lora_parameter_count(architecture, 8, 99) == memory.lora_parameter_count(
        architecture, 8, architecture.num_hidden_layers)


def test_estimate_parts():
    arch = PRESETS["hermes-mistral-7b"].architecture
    on_cuda = memory.StepShape(arch, batch_size=2, seq_length=1024, lora_rank=64, lora_layers=16, device="cuda")
    cuda = memory.estimate_training_memory(on_cuda)
    cpu = memory.estimate_training_memory(replace(on_cuda, device="cpu"))
    assert cuda.parts_gb["weights"] == pytest.approx(arch.parameter_count() * 2 / 1e9, abs=1e-3)
    assert cpu.parts_gb["weights"] == pytest.approx(2 * cuda.parts_gb["weights"], abs=1e-3)
    assert cuda.total_gb == pytest.approx(sum(cuda.parts_gb.values()), abs=0.01)
    assert cuda.parts_gb["lora_params_grads_optimizer"] == pytest.approx(
        memory.lora_parameter_count(arch, 64, 16) * 16 / 1e9, abs=1e-3)
    checkpointed = memory.estimate_training_memory(on_cuda, recomputed_layers=16)
    assert checkpointed.parts_gb["activations"] < cuda.parts_gb["activations"]
    assert checkpointed.assumptions["grad_checkpoint"] and checkpointed.assumptions["checkpointed_layers"] == 16
    bigger = memory.estimate_training_memory(replace(on_cuda, batch_size=4))
    assert bigger.parts_gb["activations"] == pytest.approx(2 * cuda.parts_gb["activations"], rel=1e-3)
    assert memory.weights_gb(arch, "cuda") == pytest.approx(cuda.parts_gb["weights"], abs=1e-3)
    assert memory.training_dtype_bytes("cuda:1") == 2 and memory.training_dtype_bytes("mps") == 2
    assert memory.training_dtype_bytes("cpu") == 4


def test_architecture_from_a_saved_config(tiny_model_dir, tmp_path):
    read = read_architecture(tiny_model_dir)
    tiny = TINY.architecture
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "max_position_embeddings"):
        assert getattr(read, field) == getattr(tiny, field), field
    assert read.parameter_count() == tiny.parameter_count()
    assert memory.fit_seq_length(None, read) == 1024 and memory.fit_seq_length(4096, read) == 1024
    assert memory.fit_seq_length(64, read) == 64
    (tmp_path / "config.json").write_text('{"hidden_size": 8,\n"vocab_size": }')
    with pytest.raises(ModelFileError, match=r"config.json:2: not valid JSON"):
        read_architecture(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelFileError, match="config.json: model config has no usable num_attention_heads, intermediate_size"):
        read_architecture(tmp_path)


def test_peak_is_the_high_water_mark_not_memory_after():
    script = (
        "from your_ai.step.memory import PeakMemory\n"
        "import psutil, torch\n"
        "peak = PeakMemory('cpu'); peak.reset(); rss = psutil.Process().memory_info().rss / 1e9\n"
        "x = torch.ones(100_000_000)\n"  # 0.4 GB, touched
        "during = peak.peak_gb(); del x\n"
        "now = psutil.Process().memory_info().rss / 1e9\n"
        "print(rss, during, peak.peak_gb(), now, peak.device_peak_gb())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True).stdout
    rss_before, during, after, now, device = out.split()
    assert float(during) >= float(rss_before) + 0.38
    assert float(now) < float(during) - 0.3  # the memory was given back...
    assert float(after) >= float(during)  # ...and the peak still counts it
    assert device == "None"


MEASURE_A_CHILD = """
import os, subprocess, sys
from your_ai.step import memory
child = subprocess.Popen([sys.executable, "-c", "x = b'1' * 300_000_000"])
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), memory.rusage_peak_rss_gb(usage))
"""


def test_a_childs_peak_rss_from_wait4():
    # Linux starts a child's peak RSS at its parent's when it executes (vfork or fork), so the
    # parent here is a fresh small process, as the benchmark's is, not this test session.
    out = subprocess.run([sys.executable, "-c", MEASURE_A_CHILD], capture_output=True, text=True, check=True).stdout
    code, peak = out.split()
    assert int(code) == 0
    assert 0.3 <= float(peak) < 1.0


def test_planning_on_cuda_does_not_create_a_cuda_context():
    """The benchmark parent sizes the budget without holding GPU memory during the fit tests."""
    import pytest
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from your_ai.step import memory
    total = memory.device_memory_gb("cuda")
    assert total > 1
    assert not torch.cuda.is_initialized()
    assert abs(total - torch.cuda.get_device_properties(0).total_memory / memory.GB) < 0.01


def test_expandable_segments_only_on_cuda_and_never_over_the_users_setting(monkeypatch):
    from your_ai.step.memory import use_expandable_segments

    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    assert use_expandable_segments("cpu") is False
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    assert use_expandable_segments("cuda") is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_expandable_segments_are_set_at_run_time(monkeypatch):
    from your_ai.step.memory import use_expandable_segments

    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    assert use_expandable_segments("cuda") is True
    held = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    assert torch.cuda.memory_stats()["reserved_bytes.all.current"] >= held.numel()
    assert any(segment.get("is_expandable") for segment in torch.cuda.memory_snapshot())


def test_sharding_saves_the_layers_share_less_what_fsdp_gathers_whole():
    big = PRESETS["hermes-70b"].architecture
    whole = memory.whole_weights_gb(big, "cuda")
    assert whole == pytest.approx((2 * 128256 * 8192 + 8192) * 2 / 1e9)  # embeddings and head, bf16
    layers = memory.weights_gb(big, "cuda") - whole
    per_gpu = {n: memory.weights_gb(big, "cuda") - memory.sharding_saves_gb(big, "cuda", n) for n in (2, 4, 8)}
    assert per_gpu[2] == pytest.approx(whole + layers / 2 + memory.FSDP_GATHERED_LAYERS * layers / 80)
    assert 79 < per_gpu[2] < 80 and per_gpu[2] > per_gpu[4] > per_gpu[8]  # 2 GPUs: 79.5 GB of 141.1
    quantized_layers = memory.weights_gb(big, "cuda", 4) - whole  # NF4; the embeddings and head stay bf16
    assert memory.sharding_saves_gb(big, "cuda", 2, quantize=4) == pytest.approx(
        quantized_layers * (0.5 - memory.FSDP_GATHERED_LAYERS / 80))
    assert memory.sharding_saves_gb(TINY.architecture, "cpu", 2) < 0  # 4 small layers: sharding costs more

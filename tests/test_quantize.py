"""4-bit QLoRA (NF4 decoder linears, torchao): building, loading, the estimate, training through the CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_distributed import one_process, torchrun
from test_train import write_corpus

from your_ai.model import quantize
from your_ai.model.architecture import build_config
from your_ai.model.load import load_model
from your_ai.model.lora import LoraSettings, apply_lora
from your_ai.model.presets import PRESETS, TINY
from your_ai.model.resolve import resolve_model
from your_ai.step import memory

pytest.importorskip("torchao")

DECODER_LINEARS = TINY.architecture.num_hidden_layers * 7  # q, k, v, o, gate, up, down


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    return weight.to(torch.float32)  # an NF4 tensor dequantizes on a dtype conversion


def test_check_bits_accepts_4_and_names_anything_else():
    assert quantize.check_bits(None) is None
    assert quantize.check_bits(4) == 4
    with pytest.raises(quantize.QuantizationError, match="--quantize 8"):
        quantize.check_bits(8)


def test_scale_groups_divide_the_block_count():
    assert quantize.scaler_block_size(4096 * 4096) == 256
    assert quantize.scaler_block_size(256 * 688) == 172  # 2752 blocks = 16 groups of 172
    assert quantize.scaler_block_size(100) is None  # not a whole number of 64-value blocks


def test_loaded_model_quantizes_every_decoder_linear_and_nothing_else(tiny_model_dir):
    full = load_model(resolve_model("tiny"), dtype=torch.float32)
    model = quantize.load_quantized_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    names = quantize.quantized_weight_names(model)
    assert len(names) == DECODER_LINEARS
    full_weights = dict(full.named_parameters())
    for name, parameter in model.named_parameters():
        assert quantize.is_quantized(parameter) == (name in names), name
        if name in names:  # 4-bit rounding: close to the weight read, far from exact
            error = (dequantized(parameter) - full_weights[name]).norm() / full_weights[name].norm()
            assert 0.01 < error < 0.15, (name, error)
        else:
            assert torch.equal(parameter, full_weights[name]), name


def test_random_quantized_model_has_the_shape_and_init_scale(tiny_model_dir):
    config = build_config(TINY.architecture)
    model = quantize.build_quantized_random_model(config, dtype=torch.float32, device="cpu", seed=3)
    again = quantize.build_quantized_random_model(config, dtype=torch.float32, device="cpu", seed=3)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert quantize.is_quantized(q) and tuple(q.shape) == (256, 256)
    assert 0.015 < dequantized(q).std().item() < 0.025  # initializer_range 0.02
    assert torch.equal(dequantized(q), dequantized(again.model.layers[0].self_attn.q_proj.weight))
    assert not any(p.device.type == "meta" for p in model.parameters())


def test_weight_bytes_match_the_estimator(tiny_model_dir):
    model = quantize.load_quantized_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    measured = quantize.quantized_summary(model)["weight_bytes"]
    estimated = memory.weight_bytes_total(TINY.architecture, 4, quantize=4)
    assert abs(measured - estimated) / estimated < 0.01
    assert estimated < 0.5 * memory.weight_bytes_total(TINY.architecture, 4)


def test_estimate_of_a_70b_model_in_4_bits():
    architecture = PRESETS["hermes-70b"].architecture
    bf16 = memory.weights_gb(architecture, "cuda")
    nf4 = memory.weights_gb(architecture, "cuda", quantize=4)
    assert bf16 > 140 and 0.25 * bf16 < nf4 < 0.3 * bf16
    fit_test = memory.StepShape(architecture, batch_size=2, seq_length=1024, lora_rank=64, lora_layers=16,
                                device="cuda", quantize=4)
    fast = memory.estimate_training_memory(fit_test, logits_chunk_tokens=1024, fused_kernels=True)
    small = memory.estimate_training_memory(fit_test, recomputed_layers=16, logits_chunk_tokens=1024,
                                            fused_kernels=True)
    assert nf4 < fast.parts_gb["weights"] < nf4 + 2 and fast.assumptions["quantize"] == 4  # + dequantizing
    assert small.total_gb < 48 < fast.total_gb


def test_lora_gradients_are_those_of_the_dequantized_model(tiny_model_dir):
    """QLoRA is LoRA on the dequantized weights: same loss, same adapter gradients."""
    quantized = quantize.load_quantized_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    reference = copy.deepcopy(load_model(resolve_model("tiny"), dtype=torch.float32))
    names = quantize.quantized_weight_names(quantized)
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name in names:
                parameter.copy_(dequantized(quantized.get_parameter(name)))
    settings = LoraSettings(rank=4, layers=2)
    torch.manual_seed(1)
    ours, _ = apply_lora(quantized, settings)
    torch.manual_seed(1)
    theirs, _ = apply_lora(reference, settings)
    for model in (ours, theirs):  # non-zero B, so every LoRA matrix gets a gradient
        torch.manual_seed(2)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(0, 0.02)
    ids = torch.randint(0, TINY.architecture.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    losses = []
    for model in (ours, theirs):
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    assert len(grads) == 4 * 2 * 2
    for name, parameter in ours.named_parameters():
        if parameter.requires_grad:
            assert torch.allclose(parameter.grad, grads[name], rtol=1e-4, atol=1e-7), name


def test_unknown_and_missing_tensors_are_named(tmp_path, tiny_model_dir):
    weights = load_file(tiny_model_dir / "model.safetensors")
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    extra = dict(weights, **{"model.layers.0.surprise.weight": torch.zeros(4)})
    save_file(extra, tmp_path / "model.safetensors")
    with pytest.raises(quantize.QuantizationError, match=r"model\.safetensors: tensor 'model\.layers\.0\.surprise"):
        quantize.load_quantized_model(tmp_path, dtype=torch.float32, device="cpu")
    missing = {k: v for k, v in weights.items() if k != "model.layers.1.mlp.up_proj.weight"}
    save_file(missing, tmp_path / "model.safetensors")
    with pytest.raises(quantize.QuantizationError, match=r"no tensor for model\.layers\.1\.mlp\.up_proj\.weight"):
        quantize.load_quantized_model(tmp_path, dtype=torch.float32, device="cpu")


RUN = ["--model", "tiny", "--data", "corpus.jsonl", "--max-steps", "4", "--save-every", "2", "--warmup-steps", "1",
       "--lora-rank", "4", "--max-seq-length", "32", "--device", "cpu", "--no-tensorboard", "--quantize", "4"]


@pytest.fixture(scope="module")
def qlora_runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("qlora")
    write_corpus(root / "corpus.jsonl", 14)
    one = one_process(*RUN, "--batch-size", "4", "--output-dir", "one", cwd=root)
    two = torchrun(2, *RUN, "--batch-size", "2", "--output-dir", "two", cwd=root)
    return root, one, two


def test_train_quantize_4_saves_an_adapter_for_the_full_precision_model(qlora_runs):
    from peft import PeftModel

    root, one, _ = qlora_runs
    assert f"QLoRA: {DECODER_LINEARS} linear weights of the decoder layers in NF4" in one.stdout
    state = json.loads((root / "one" / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["args"]["quantize"] == 4  # a resumed run keeps it
    base = load_model(resolve_model("tiny"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, root / "one")
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    trained = load_file(root / "one" / "adapter_model.safetensors")
    assert any(value.abs().max() > 0 for key, value in trained.items() if "lora_B" in key)


def test_two_processes_train_the_quantized_model_as_one(qlora_runs):
    """Each rank builds the same NF4 weights; DDP must not touch them (it would flatten them)."""
    root, _, two = qlora_runs
    one = load_file(root / "one" / "adapter_model.safetensors")
    two = load_file(root / "two" / "adapter_model.safetensors")
    assert max((one[key] - two[key]).abs().max().item() for key in one) < 1e-6


def test_two_processes_train_the_quantized_model_sharded_as_one(qlora_runs):
    """Under --strategy fsdp each rank builds the NF4 weights whole, then keeps its shards of them."""
    root, _, _ = qlora_runs
    result = torchrun(2, *RUN, "--batch-size", "2", "--output-dir", "fsdp", "--strategy", "fsdp", cwd=root)
    assert "FSDP, parameters sharded" in result.stdout and "read only its shards" not in result.stdout
    one = load_file(root / "one" / "adapter_model.safetensors")
    sharded = load_file(root / "fsdp" / "adapter_model.safetensors")
    assert one.keys() == sharded.keys()
    assert max((one[key] - sharded[key]).abs().max().item() for key in one) < 1e-6


def test_quantize_other_than_4_is_refused_before_loading(tmp_path, tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "your_ai", "train", "--quantize", "8", "--output-dir",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--quantize 8: supported values are 4" in result.stderr
    assert not (tmp_path / "out").exists()


def test_benchmark_fit_test_in_4_bits_and_the_command_to_train_it(tmp_path, tiny_model_dir):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "your_ai", "benchmark", "--models", "tiny", "--quantize", "4", "--device", "cpu",
         "--steps", "2", "--seq-length", "32", "--output", str(out), "--log", str(tmp_path / "log.jsonl")],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✓ Pass" in result.stdout and "4-bit]" in result.stdout
    assert "Train it with: your-ai train --quantize 4 --model tiny" in result.stdout
    model = json.loads(out.read_text())["models"][0]
    assert model["config"]["quantize"] == 4 and model["success"]
    assert any(f"QLoRA: {DECODER_LINEARS} linear weights" in note for note in model["notes"])


def test_benchmark_over_budget_check_counts_4_bit_weights(tmp_path):
    """hermes-70b: 282 GB of fp32 weights on the CPU, 44 GB with NF4 decoder linears; checked before
    anything is loaded."""
    def over_budget_line(*extra: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "your_ai", "benchmark", "--models", "hermes-70b", "--synthetic", "--device", "cpu",
             "--max-memory", "30", "--log", str(tmp_path / "log.jsonl"), *extra],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stdout + result.stderr
        return next(line for line in result.stdout.splitlines() if "Over budget" in line)

    architecture = PRESETS["hermes-70b"].architecture
    full, nf4 = memory.weights_gb(architecture, "cpu"), memory.weights_gb(architecture, "cpu", quantize=4)
    assert 280 < full and 40 < nf4 < 45
    assert f"the weights alone need {full:.2f} GB" in over_budget_line()
    assert f"the weights alone need {nf4:.2f} GB" in over_budget_line("--quantize", "4")


def test_recommend_and_optimize_profiles_know_4_bit_weights():
    from your_ai.fit.profiles import apply_profile
    from your_ai.fit.recommend import recommend_presets

    full = recommend_presets(memory_gb=80, device="cuda")
    nf4 = recommend_presets(memory_gb=80, device="cuda", quantize=4)
    assert full["largest_fit"] == "r1-distill-14b" and nf4["largest_fit"] in ("dolphin-70b", "r1-distill-70b", "hermes-70b")
    profile = {"model": "llama-8b", "batch_size": 4, "lora_rank": 64, "lora_alpha": 128, "lora_layers": 16,
               "quantize": 4}
    options, note = apply_profile({"model": None, "batch_size": None, "lora_rank": None, "lora_alpha": None,
                                   "lora_layers": None, "max_seq_length": None, "quantize": None}, profile, "p.json")
    assert options["quantize"] == 4 and "quantize 4" in note


def test_own_nf4_linear_gives_torchaos_numbers(tiny_model_dir, monkeypatch):
    """The linear layer that dequantizes through ``_dequantize`` (compiled on CUDA, eager here)
    computes what torchao's own NF4 linear computes, forward and backward."""
    calls = []
    real = quantize._dequantize
    monkeypatch.setattr(quantize, "_dequantize", lambda weight, dtype: calls.append(1) or real(weight, dtype))
    results = []
    for own in (False, True):
        model = quantize.load_quantized_model(tiny_model_dir, dtype=torch.float32, device="cpu")
        if own:
            assert quantize.use_compiled_dequantization(model) == DECODER_LINEARS
        torch.manual_seed(1)
        peft_model, _ = apply_lora(model, LoraSettings(rank=4, layers=2))
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.data.fill_(0.01)
        ids = torch.randint(0, TINY.architecture.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}))
    # in the patched run: forward, each of the 28 weights once; backward, the 7 weights of each of the
    # 2 adapted layers except q/k/v of the lower one (nothing below it needs a gradient)
    assert len(calls) == DECODER_LINEARS + 2 * 7 - 3
    (theirs, their_grads), (ours, our_grads) = results
    assert torch.equal(theirs, ours)
    assert all(torch.equal(their_grads[name], our_grads[name]) for name in their_grads)

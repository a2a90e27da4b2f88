"""The fast LoRA step gives the plain step's numbers: per-sample cross-entropy, distrust-weighted
loss and LoRA gradients, with recomputation and bf16 autocast; it keeps less memory; the mode
chooser follows the budget."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from your_ai.model.architecture import build_random_model
from your_ai.model.lora import LoraSettings, apply_lora, lora_config
from your_ai.model.meta import decoder_layers
from your_ai.model.presets import PRESETS, TINY
from your_ai.objective.distrust import per_sample_cross_entropy
from your_ai.step import fast as fast_step
from your_ai.step import fused_lora, head, head_kernel
from your_ai.step.memory import StepShape, estimate_training_memory
from your_ai.step.modes import (
    choose_mode,
    default_chunk_tokens,
    liger_available,
    mode_with,
)
from your_ai.train.loss import compute_loss
from your_ai.train.plan import Objective

LORA = LoraSettings(rank=8, layers=3)  # 3 of the tiny model's 4 layers: one frozen layer below
TINY_STEP = StepShape(TINY.architecture, 3, 37, LORA.rank, LORA.layers, "cpu")  # make_batch's
LLAMA_STEP = StepShape(PRESETS["llama-8b"].architecture, 8, 2048, 16, 32, "cuda")


def tiny_lora_model(dtype=torch.float32, seed=0, lora=LORA):
    model = build_random_model(TINY.architecture, dtype=dtype, seed=seed)
    model.config.use_cache = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model, _ = apply_lora(model, lora)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # LoRA B starts at zero, which would make every A gradient zero
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    peft_model.train()
    return peft_model


def make_batch(batch=3, seq=37, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, TINY.architecture.vocab_size, (batch, seq), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, seq - 9:] = 0  # right padding
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[0, :11] = -100  # a prompt that is not learned
    labels[2, 1:] = -100  # a sample with no target token: its cross-entropy is 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "auth_weight": torch.tensor([0.05, 0.9, 0.5], dtype=torch.float64)[:batch],
        "prov_entropy": torch.tensor([7.5, 1.0, 3.0], dtype=torch.float64)[:batch],
    }


def weighted_objective():
    return Objective.from_dataset("weighted", 2.7, 1.0, [0.05, 0.9, 0.5, 0.3], [7.5, 1.0, 3.0, 5.0])


def loss_and_lora_grads(model, batch, objective, **kwargs):
    model.zero_grad(set_to_none=True)
    parts = compute_loss(model, batch, objective, **kwargs)
    parts.total.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return parts, grads


class SavedBytes:
    """Bytes autograd keeps for the backward pass (distinct storages), via saved-tensor hooks."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def __enter__(self):
        def pack(tensor):
            storage = tensor.untyped_storage()
            self.storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


class LargestTensor(TorchDispatchMode):
    """The largest tensor any operation creates while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel() * value.element_size())
        return out


# ---------------------------------------------------------------------------- the head

@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, None])
def test_chunked_head_equals_cross_entropy_of_full_logits(chunk_tokens):
    model = tiny_lora_model()
    batch = make_batch()
    with torch.no_grad():
        full = per_sample_cross_entropy(model(input_ids=batch["input_ids"],
                                              attention_mask=batch["attention_mask"]).logits, batch["labels"])
        chunked = head.model_per_sample_cross_entropy(model, batch, chunk_tokens=chunk_tokens)
    assert chunked.dtype == torch.float32 and chunked.shape == (3,)
    assert full[2] == 0 and chunked[2] == 0
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["weighted", "additive"])
def test_distrust_step_loss_and_lora_gradients_match_the_plain_step(mode):
    model = tiny_lora_model()
    batch = make_batch()
    objective = weighted_objective() if mode == "weighted" else Objective(mode="additive", lambda_weight=0.5)
    plain, plain_grads = loss_and_lora_grads(model, batch, objective)
    fast, fast_grads = loss_and_lora_grads(model, batch, objective, fast_head=True)
    torch.testing.assert_close(fast.total, plain.total, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.cross_entropy, plain.cross_entropy, atol=1e-5, rtol=0)
    assert fast_grads.keys() == plain_grads.keys() and len(plain_grads) == 4 * 2 * LORA.layers
    for name, grad in plain_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_weights_change_the_gradient_of_the_chunked_head():
    """The distrust weights reach the gradients: weighting sample 0 alone is sample 0's gradient."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    labels = torch.randint(0, 50, (2, 9))
    per_sample = head.linear_cross_entropy_per_sample(hidden, weight, labels, chunk_tokens=4)
    (torch.tensor([3.0, 0.0]) * per_sample).sum().backward()
    reference = hidden.detach().clone().requires_grad_(True)
    (3.0 * per_sample_cross_entropy(F.linear(reference, weight), labels)[0]).backward()
    torch.testing.assert_close(hidden.grad, reference.grad, atol=1e-5, rtol=1e-5)
    assert hidden.grad[1].abs().max() == 0


def test_a_trainable_head_gets_its_gradient_through_recomputed_chunks():
    torch.manual_seed(1)
    hidden = torch.randn(2, 11, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (2, 11))
    labels[1, :4] = -100
    (head.linear_cross_entropy_per_sample(hidden, weight, labels, chunk_tokens=5) * torch.tensor([1.0, 2.0])).sum().backward()
    hidden_ref = hidden.detach().clone().requires_grad_(True)
    weight_ref = weight.detach().clone().requires_grad_(True)
    (per_sample_cross_entropy(F.linear(hidden_ref, weight_ref), labels) * torch.tensor([1.0, 2.0])).sum().backward()
    torch.testing.assert_close(weight.grad, weight_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden.grad, hidden_ref.grad, atol=1e-5, rtol=1e-5)


def test_the_chunked_head_keeps_and_creates_far_less_than_the_full_logits():
    torch.manual_seed(2)
    batch, seq, width, vocab = 2, 256, 64, 16384
    weight = torch.randn(vocab, width) * 0.05
    labels = torch.randint(0, vocab, (batch, seq))
    grads, measured = {}, {}
    for name in ("full", "chunked"):
        hidden = (torch.randn(batch, seq, width, generator=torch.Generator().manual_seed(3))).requires_grad_(True)
        with SavedBytes() as saved, LargestTensor() as largest:
            if name == "full":
                per_sample = per_sample_cross_entropy(F.linear(hidden, weight), labels)
            else:
                per_sample = head.linear_cross_entropy_per_sample(hidden, weight, labels, chunk_tokens=64)
            per_sample.mean().backward()
        grads[name], measured[name] = hidden.grad, (saved.total, largest.largest)
    torch.testing.assert_close(grads["chunked"], grads["full"], atol=1e-6, rtol=1e-5)
    logits_bytes = batch * (seq - 1) * vocab * 4
    assert measured["full"][0] >= logits_bytes and measured["full"][1] >= logits_bytes
    saved, largest = measured["chunked"]
    assert saved <= 2 * batch * seq * width * 4  # the rows' gradients (and their indices), no logits
    assert largest <= 64 * vocab * 4  # one chunk of logits at a time
    assert saved * 50 < measured["full"][0] and largest * 7 < measured["full"][1]


def test_head_choice():
    assert head.resolve_head("auto", "cpu") == "chunked"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        head.resolve_head("liger", "cpu")
    with pytest.raises(ValueError, match="must be one of"):
        head.resolve_head("fused", "cpu")
    assert default_chunk_tokens(32032) == 4096 and default_chunk_tokens(128256) == 1024


def test_modes_that_recompute_take_smaller_head_chunks_and_the_prepared_step_carries_them():
    from your_ai.train.setup import PreparedStep

    fast = mode_with(LLAMA_STEP, 0, fused_kernels=True)
    small = mode_with(LLAMA_STEP, 32, fused_kernels=True)
    assert (fast.chunk_tokens, small.chunk_tokens) == (1024, 256)
    # the smaller chunk is what the estimate counts: 3/4 of a 1024-token chunk's logits, 2 bytes each
    # with the Triton kernel (fused kernels: the gradient over the bf16 logits), 4 + 2 x 2 with PyTorch ops
    without = estimate_training_memory(LLAMA_STEP, recomputed_layers=32, logits_chunk_tokens=1024,
                                       fused_kernels=True).total_gb
    assert without - small.estimate_gb == pytest.approx(768 * 128256 * 2 / 1e9, abs=1e-3)  # estimate_gb: 3 decimals
    unfused = mode_with(LLAMA_STEP, 32, fused_kernels=False)
    without = estimate_training_memory(LLAMA_STEP, recomputed_layers=32, logits_chunk_tokens=1024,
                                       fused_kernels=False).total_gb
    assert without - unfused.estimate_gb == pytest.approx(768 * 128256 * 8 / 1e9, abs=1e-3)
    assert PreparedStep(small, True).chunk_tokens == 256 and PreparedStep(small, False).chunk_tokens is None


# ---------------------------------------------------------------------------- modes

def test_prepared_step_with_recomputed_layers_matches_and_keeps_less():
    batch, objective = make_batch(), weighted_objective()
    reference = tiny_lora_model()
    plain, plain_grads = loss_and_lora_grads(reference, batch, objective)
    kept = {}
    for count in (0, 1, 3):
        model = tiny_lora_model()
        mode = mode_with(TINY_STEP, count)
        setup = fast_step.prepare_step(model, mode)
        assert setup.autocast_dtype is None and not setup.fused_kernels
        assert setup.checkpointed_layers == [1, 2, 3][:count]
        assert fast_step.adapted_layer_indices(model) == [1, 2, 3]
        with SavedBytes() as saved:
            parts, grads = loss_and_lora_grads(model, batch, objective, fast_head=True)
        kept[count] = saved.total
        torch.testing.assert_close(parts.total, plain.total, atol=1e-5, rtol=0)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=f"{count} layers: {name}")
    assert kept[0] > kept[1] > kept[3]


def test_bf16_model_with_fp32_adapters_trains_in_bf16_and_keeps_fp32_state():
    batch, objective = make_batch(), weighted_objective()
    plain_model = tiny_lora_model(torch.bfloat16)
    plain, plain_grads = loss_and_lora_grads(plain_model, batch, objective)
    model = tiny_lora_model(torch.bfloat16)
    setup = fast_step.prepare_step(model, None)
    assert setup.autocast_dtype == torch.bfloat16 and setup.checkpointed_layers == []
    fast, grads = loss_and_lora_grads(model, batch, objective, fast_head=True)
    assert abs(float(fast.total.detach()) - float(plain.total.detach())) < 2e-2 * float(plain.total.detach())
    for name, grad in plain_grads.items():
        assert grad.dtype == torch.float32 and grads[name].dtype == torch.float32, name
        cosine = F.cosine_similarity(grads[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))
    # the prepared model still answers a plain forward call (under the same autocast)
    with torch.no_grad():
        assert model(input_ids=batch["input_ids"]).logits.dtype == torch.bfloat16


# ---------------------------------------------------------------------------- q/k/v LoRA A in one matmul

QV_ONLY = LoraSettings(rank=8, layers=3, target_modules=("q_proj", "v_proj"))


def lora_calls(model, part: str = "lora_A"):
    """Counts of calls of each q/k/v/o ``lora_A`` (or ``lora_B``) module: the shared matmul calls none
    of q/k/v's A modules, the addmm epilogue none of the B modules."""
    calls: dict[str, int] = {}
    for name, module in model.named_modules():
        if name.endswith(f"{part}.default"):
            calls[name] = 0
            module.register_forward_hook(lambda module, args, out, name=name: calls.__setitem__(name, calls[name] + 1))
    return calls


def assert_same_step(shared, separate, *, rtol=1e-5):
    """Loss and every LoRA gradient equal within float32 rounding (relative to each tensor's scale)."""
    (loss, grads), (ref_loss, ref_grads) = shared, separate
    torch.testing.assert_close(loss.total, ref_loss.total, atol=0, rtol=rtol)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        scale = float(grad.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(grads[name], grad, atol=rtol * scale, rtol=rtol, msg=name)


@pytest.mark.parametrize("recomputed", [0, 3])
def test_shared_qkv_lora_a_gives_the_separate_matmuls_loss_and_gradients(recomputed):
    batch, objective = make_batch(), weighted_objective()
    mode = mode_with(TINY_STEP, recomputed)
    separate = tiny_lora_model()
    setup = fast_step.prepare_step(separate, mode, share_lora_a=False, fuse_add=False)  # PEFT's forwards
    assert setup.shared_lora_a_layers == [] == setup.fused_add_layers
    assert not any("one matmul" in note or "epilogue" in note for note in setup.notes)
    reference = loss_and_lora_grads(separate, batch, objective, fast_head=True)
    model = tiny_lora_model()
    setup = fast_step.prepare_step(model, mode)
    assert setup.shared_lora_a_layers == [1, 2, 3] and setup.checkpointed_layers == [1, 2, 3][:recomputed]
    assert setup.fused_add_layers == [1, 2, 3]
    assert any("q/k/v LoRA A products as one matmul in 3 of 3" in note for note in setup.notes)
    assert any("LoRA B products added in the base matmuls' epilogue in 3 of 3" in note for note in setup.notes)
    calls = lora_calls(model)
    products = lora_calls(model, "lora_B")
    result = loss_and_lora_grads(model, batch, objective, fast_head=True)
    assert_same_step(result, reference)
    assert len(result[1]) == 4 * 2 * LORA.layers
    assert all(count == 0 for name, count in calls.items() if "o_proj" not in name)
    assert all(count == 1 + (recomputed > 0) for name, count in calls.items() if "o_proj" in name)
    assert sum(products.values()) == 0  # every B product went through the addmm epilogue
    # PEFT's forward again after the undo, with the same numbers
    assert fused_lora.unshare_qkv_lora_a(model) == 3 and fused_lora.unshare_qkv_lora_a(model) == 0
    assert fused_lora.unfuse_lora_add(model) == 3 and fused_lora.unfuse_lora_add(model) == 0
    attention = decoder_layers(model)[1].self_attn
    assert not any("forward" in vars(module) for module in (attention, attention.q_proj, attention.o_proj))
    assert_same_step(loss_and_lora_grads(model, batch, objective, fast_head=True), reference)
    assert all(count > 0 for count in calls.values()) and all(count > 0 for count in products.values())


@pytest.mark.parametrize("share_lora_a", [False, True])
def test_lora_b_in_the_matmul_epilogue_gives_peft_loss_and_gradients(share_lora_a):
    batch, objective = make_batch(), weighted_objective()
    mode = mode_with(TINY_STEP, 1)
    separate = tiny_lora_model()  # LoRA B not zero, so the epilogue adds something
    fast_step.prepare_step(separate, mode, share_lora_a=False, fuse_add=False)
    reference = loss_and_lora_grads(separate, batch, objective, fast_head=True)
    model = tiny_lora_model()
    setup = fast_step.prepare_step(model, mode, share_lora_a=share_lora_a)
    assert setup.fused_add_layers == [1, 2, 3]
    products = lora_calls(model, "lora_B")
    assert_same_step(loss_and_lora_grads(model, batch, objective, fast_head=True), reference)
    assert sum(products.values()) == 0


def test_lora_on_q_and_v_only_keeps_peft_forwards():
    batch, objective = make_batch(), weighted_objective()
    separate = tiny_lora_model(lora=QV_ONLY)
    fast_step.prepare_step(separate, None, share_lora_a=False, fuse_add=False)
    reference = loss_and_lora_grads(separate, batch, objective, fast_head=True)
    model = tiny_lora_model(lora=QV_ONLY)
    setup = fast_step.prepare_step(model, mode_with(TINY_STEP, 1))
    assert setup.shared_lora_a_layers == [] and not any("one matmul" in note for note in setup.notes)
    calls = lora_calls(model)
    assert_same_step(loss_and_lora_grads(model, batch, objective, fast_head=True), reference)
    assert len(calls) == 2 * 3 and all(count == 1 + ("layers.1." in name) for name, count in calls.items())


def test_shared_qkv_lora_a_falls_back_to_peft_when_it_does_not_apply():
    model, separate = tiny_lora_model(), tiny_lora_model()
    assert fused_lora.share_qkv_lora_a(model) == [1, 2, 3] == fused_lora.share_qkv_lora_a(model)  # idempotent
    attention = decoder_layers(model)[2].self_attn
    reference = decoder_layers(separate)[2].self_attn
    x, y = torch.randn(2, 5, 256), torch.randn(2, 5, 256)

    def projections(module, first, second):  # q and v read ``first``, k reads ``second``
        return module.q_proj(first), module.k_proj(second), module.v_proj(first)

    shared = attention.forward.shared
    calls = lora_calls(model)
    for first, second in ((x, x), (x, y)):
        with torch.no_grad():
            got = fused_lora._SharedAttentionForward(shared, projections)(attention, first, second)
            want = projections(reference, first, second)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert sum(calls.values()) == 1  # only k_proj's own lora_A, for the other input
    assert shared.input is None and shared.pieces is None  # nothing kept after the call
    batch = make_batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def logits(peft_model):
        with torch.no_grad():
            return peft_model(**inputs).logits

    with model.disable_adapter(), separate.disable_adapter():  # disabled adapters: the base model
        torch.testing.assert_close(logits(model), logits(separate))
    assert sum(calls.values()) == 1
    model.merge_adapter(), separate.merge_adapter()  # merged: the base layers carry the adapters
    torch.testing.assert_close(logits(model), logits(separate), atol=1e-5, rtol=1e-5)
    model.unmerge_adapter(), separate.unmerge_adapter()
    assert sum(calls.values()) == 1
    for peft_model in (model, separate):  # two active adapters: PEFT's loop over them
        peft_model.add_adapter("other", lora_config(LORA, 4)[0])
        peft_model.base_model.set_adapter(["default", "other"])
    torch.testing.assert_close(logits(model), logits(separate), atol=1e-5, rtol=1e-5)
    assert sum(calls.values()) == 1 + 4 * 3  # every q/k/v/o lora_A of the 3 layers, once
    dropout = tiny_lora_model(lora=LoraSettings(rank=8, layers=3, dropout=0.1))
    assert fused_lora.share_qkv_lora_a(dropout) == [] and fused_lora.fuse_lora_add(dropout) == []  # PEFT's forwards


def test_bf16_autocast_and_the_saved_adapter_with_shared_qkv_lora_a(tmp_path):
    from peft import PeftModel

    batch, objective = make_batch(), weighted_objective()
    separate = tiny_lora_model(torch.bfloat16)
    fast_step.prepare_step(separate, None, share_lora_a=False, fuse_add=False)
    _, ref_grads = loss_and_lora_grads(separate, batch, objective, fast_head=True)
    model = tiny_lora_model(torch.bfloat16)
    setup = fast_step.prepare_step(model, mode_with(TINY_STEP, 2))
    assert setup.autocast_dtype == torch.bfloat16 and setup.shared_lora_a_layers == [1, 2, 3]
    _, grads = loss_and_lora_grads(model, batch, objective, fast_head=True)
    for name, grad in ref_grads.items():
        assert grads[name].dtype == torch.float32
        assert F.cosine_similarity(grads[name].flatten(), grad.flatten(), dim=0) > 0.999, name
    # the saved adapter is PEFT's, with the same keys as an unprepared model's, and loads back
    model.save_pretrained(tmp_path / "shared")
    tiny_lora_model(torch.bfloat16).save_pretrained(tmp_path / "plain")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "shared" / "adapter_model.safetensors")
    assert saved.keys() == load_file(tmp_path / "plain" / "adapter_model.safetensors").keys()
    loaded = PeftModel.from_pretrained(build_random_model(TINY.architecture, dtype=torch.bfloat16), tmp_path / "shared")
    for name, parameter in loaded.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(parameter, dict(model.named_parameters())[name], atol=0, rtol=0)


def test_mode_chooser_follows_the_budget():
    def choose(budget):
        return choose_mode(LLAMA_STEP, budget, fused_kernels=True)

    roomy, middle, tight, impossible = choose(200), choose(50), choose(24), choose(20)
    assert (roomy.name, roomy.checkpointed_layers, roomy.fits) == ("fast", 0, True)
    assert middle.name == "selective" and 0 < middle.checkpointed_layers < 32 and middle.fits
    assert middle.estimate_gb <= 50 < mode_with(LLAMA_STEP, middle.checkpointed_layers - 1,
                                                fused_kernels=True).estimate_gb
    assert (tight.name, tight.checkpointed_layers, tight.fits) == ("small", 32, True)
    assert (impossible.name, impossible.fits) == ("small", False)
    assert "lower the batch size" in impossible.reason and "selective" in middle.reason
    assert tight.estimate_gb < middle.estimate_gb < roomy.estimate_gb
    with pytest.raises(ValueError, match="budget_gb"):
        choose(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA heads need a CUDA GPU")
@pytest.mark.parametrize("kernel, atol, rtol, min_cosine", [
    ("chunked", 1e-4, 1e-5, 0.9999),  # the Triton cross-entropy kernel: the same numbers
    ("liger", 2e-2, 1e-2, 0.99),  # Liger's fused linear cross-entropy: its own bf16 rounding
])
def test_cuda_heads_match_the_chunked_head_with_pytorch_ops(kernel, atol, rtol, min_cosine):
    if kernel == "liger" and not liger_available():
        pytest.skip("Liger's fused linear cross-entropy needs liger_kernel")
    if kernel == "chunked" and head_kernel.triton is None:
        pytest.skip("the head's cross-entropy kernel needs triton")
    torch.manual_seed(4)
    hidden = torch.randn(2, 700, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(50000, 256, device="cuda", dtype=torch.bfloat16) * 0.05
    labels = torch.randint(0, 50000, (2, 700), device="cuda")
    labels[0, :100] = -100
    results = {}
    for name in ("torch", kernel):
        per_sample = head.linear_cross_entropy_per_sample(hidden, weight, labels, chunk_tokens=256, head=name)
        (grad,) = torch.autograd.grad((per_sample * torch.tensor([2.0, 0.5], device="cuda")).sum(), hidden)
        results[name] = (per_sample.detach(), grad.float())
    torch.testing.assert_close(results[kernel][0], results["torch"][0], atol=atol, rtol=rtol)
    assert F.cosine_similarity(results[kernel][1].flatten(), results["torch"][1].flatten(), dim=0) > min_cosine


def test_gpu_benchmark_script_runs_end_to_end_on_the_tiny_model(tmp_path, monkeypatch):
    """``bench/gpu_lora.py --smoke``: the correctness check, a baseline and ours, table and JSON."""
    import json
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu_lora

    out = tmp_path / "bench.json"
    code = gpu_lora.main(["--smoke", "--variants", "peft,peft-liger,ours-small,ours-auto,ours-fast-nofuse",
                          "--steps", "1", "--warmup", "0", "--json-out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["checks"][0]["passed"] and result["checks"][0]["heads"]["chunked"]["relative_loss_difference"] < 1e-5
    rows = {row["variant"]: row for row in result["rows"]}
    assert rows["peft-liger"]["status"] == "skipped"
    assert rows["peft"]["status"] == rows["ours-small"]["status"] == rows["ours-fast"]["status"] == "ok"
    assert rows["ours-auto"]["same_as"] == "ours-fast" and rows["ours-small"]["checkpointed_layers"] == 3
    assert rows["ours-small"]["tokens_per_s"] > 0 and "speedup_vs_best_baseline" in rows["ours-small"]
    assert rows["ours-fast-nofuse"]["status"] == "ok" and rows["ours-fast-nofuse"]["shared_lora_a_layers"] == 0
    assert rows["ours-fast"]["shared_lora_a_layers"] == 3 and rows["ours-fast"]["speedup_vs_nofuse"] > 0
    assert "speedup_vs_nofuse" not in rows["ours-small"]  # no ours-small-nofuse measured
    # T adapts every layer: forward + backward = 4 x tokens x matmul weights (+ LoRA and attention)
    llama, tokens = PRESETS["llama-8b"].architecture, 8 * 2048
    matmul_weights = llama.parameter_count() - llama.vocab_size * llama.hidden_size
    attention = 32 * 2 * 8 * 2048**2 * llama.hidden_size
    lora = 16 * (4096 + 4096 + 4096 + 1024 + 4096 + 1024 + 4096 + 4096) * 32
    expected = 4 * tokens * matmul_weights + 3 * attention + 6 * tokens * lora
    assert gpu_lora.step_flops(gpu_lora.CONFIGS["T"]) == pytest.approx(expected, rel=1e-4)
    del sys.modules["gpu_lora"]


def test_torch_rms_norm_gives_the_models_own_norm(tiny_model_dir):
    """The fused kernels' RMSNorm (``torch.nn.functional.rms_norm`` set on each norm module) computes what
    the model's own RMSNorm computes, forward and backward."""
    from your_ai.model.load import load_model
    from your_ai.model.resolve import resolve_model

    model = load_model(resolve_model("tiny"), dtype=torch.float32)
    norms = [module for module in model.modules() if type(module).__name__ == "LlamaRMSNorm"]
    with torch.no_grad():
        for index, norm in enumerate(norms):
            norm.weight.copy_(torch.linspace(0.5, 1.5, norm.weight.numel()) * (1 + index / 10))
    hidden = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 3
    expected, gradients = [], []
    for norm in norms:
        x = hidden.clone().requires_grad_(True)
        out = norm(x)
        out.pow(2).sum().backward()
        expected.append(out.detach())
        gradients.append(x.grad)
    assert fast_step.torch_rms_norm(model) == len(norms) == 2 * model.config.num_hidden_layers + 1
    for norm, out, grad in zip(norms, expected, gradients):
        x = hidden.clone().requires_grad_(True)
        ours = norm(x)
        ours.pow(2).sum().backward()
        torch.testing.assert_close(ours, out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x.grad, grad, atol=1e-4, rtol=1e-5)

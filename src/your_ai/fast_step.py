"""The fast LoRA training step: a chunked head, fused kernels, and recomputation sized to a budget.

Three things make a LoRA step on a large model faster or smaller than the plain
``model(...).logits`` -> cross-entropy step, and each gives the same numbers:

* **The chunked linear + cross-entropy head** (``linear_cross_entropy_per_sample``). The plain
  step materialises the logits of every token in fp32 (batch x seq x vocab: 2 GB for 8 x 2048
  tokens of a 32k vocabulary, 8.4 GB for Llama 3's 128k) and keeps them for the backward
  pass. Here the decoder runs to its final hidden states and the head runs over chunks of
  tokens (those with a target only); for each chunk the gradient of every token's loss with
  respect to its hidden state is computed at once and kept (tokens x hidden, in the model's
  dtype), and the chunk's logits are dropped. Because a token's loss depends on its own hidden
  state only, the backward pass just scales those rows by each token's upstream gradient, so any
  weighting of the per-token or per-sample losses -- the distrust weights included -- gets exact
  gradients. Two head matmuls per step instead of three for a recomputing head. Pure PyTorch
  (CPU, MPS, CUDA). ``head="liger"`` uses Liger-Kernel's fused linear cross-entropy with
  ``reduction="none"`` instead (CUDA; it recomputes the logits in the backward pass).
* **Fused kernels** on CUDA when ``liger_kernel`` is installed: RMSNorm, SwiGLU and RoPE
  (``apply_fused_kernels``). LoRA adapters stay in fp32 (their optimizer state too) while their
  matmuls run in the model's bf16 under ``torch.autocast``, so they keep no fp32 copies of
  their inputs.
* **Recomputation sized to a budget** (``choose_mode``): ``fast`` recomputes nothing,
  ``small`` recomputes every adapted layer in the backward pass, ``selective`` recomputes only
  as many adapted layers as the memory estimate needs. Layers below the first adapter keep
  nothing for the backward pass in every mode.

``prepare_step(model, mode)`` applies the kernels and the recomputation to a PEFT model;
``model_per_sample_cross_entropy(model, batch)`` is the per-sample cross-entropy the distrust
objective takes (``your_ai.train.compute_loss(..., fast_head=True)`` uses it).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from your_ai.distrust import IGNORE_INDEX, per_sample_cross_entropy
from your_ai.lora import LoraSettings
from your_ai.memory import estimate_for_device
from your_ai.presets import Architecture

HEADS = ("auto", "chunked", "liger")
MODE_NAMES = ("fast", "selective", "small")

# Model types whose causal-LM head is a plain bias-free linear layer on the decoder's output
# (no logit scaling or soft-capping), so the chunked head computes exactly their logits.
PLAIN_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

# Liger-Kernel's patch function for each model type it fuses here.
LIGER_PATCHES = {
    "llama": "apply_liger_kernel_to_llama",
    "mistral": "apply_liger_kernel_to_mistral",
    "qwen2": "apply_liger_kernel_to_qwen2",
}

CHUNK_FP32_BYTES = 512 * 2**20  # fp32 logits of one chunk of the chunked head


# ---------------------------------------------------------------------------- the chunked head

def default_chunk_tokens(vocab_size: int) -> int:
    """Tokens per head chunk: the largest power of two whose fp32 logits fit ``CHUNK_FP32_BYTES``,
    within [256, 8192] (4096 for a 32k vocabulary, 1024 for 128k)."""
    tokens = max(1, CHUNK_FP32_BYTES // (4 * vocab_size))
    return max(256, min(8192, 1 << (tokens.bit_length() - 1)))


def _chunk_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, want_grad: bool):
    """Per-token cross-entropy of one chunk and, with ``want_grad``, d loss_t / d hidden_t per row."""
    logits = F.linear(hidden, weight)
    work = logits.float()  # the plain step's ``logits.float()``; the same tensor when already fp32
    del logits
    lse = torch.logsumexp(work, dim=-1)
    losses = lse - work.gather(1, targets[:, None]).squeeze(1)
    if not want_grad:
        return losses, None
    work.sub_(lse[:, None]).exp_()  # softmax
    work.scatter_add_(1, targets[:, None], work.new_full((targets.numel(), 1), -1.0))
    return losses, work.to(weight.dtype) @ weight


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of ``hidden @ weight.T``, chunk by chunk, gradient computed in the forward.

    ``weight`` must not need a gradient (the head of a LoRA model is frozen).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens, want_grad):
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grads = torch.empty_like(hidden) if want_grad else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            stop = start + chunk_tokens
            losses[start:stop], chunk_grad = _chunk_losses(hidden[start:stop], weight, targets[start:stop], want_grad)
            if want_grad:
                grads[start:stop] = chunk_grad
        if want_grad:
            ctx.save_for_backward(grads)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (grads,) = ctx.saved_tensors
        return (grads * grad_losses[:, None]).to(grads.dtype), None, None, None, None


def _checkpointed_token_losses(hidden, weight, targets, chunk_tokens):
    """Per-token cross-entropy with each chunk recomputed in the backward pass (a trainable head)."""
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(rows, head_weight, chunk_targets):
        return F.cross_entropy(F.linear(rows, head_weight).float(), chunk_targets, reduction="none")

    pieces = [
        checkpoint(chunk_loss, hidden[start:start + chunk_tokens], weight, targets[start:start + chunk_tokens],
                   use_reentrant=False)
        for start in range(0, hidden.shape[0], chunk_tokens)
    ]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def _liger_token_losses(hidden, weight, targets):
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="none")(weight, hidden, targets)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_head(head: str, device_type: str) -> str:
    """``auto`` is ``chunked``: on an H100 it ran config S at 17,863 tokens/s against 14,742 with
    Liger's per-token fused linear cross-entropy, and tied on config T (bench/RESULTS.md)."""
    if head not in HEADS:
        raise ValueError(f"head {head!r} must be one of {', '.join(HEADS)}")
    if head == "auto":
        return "chunked"
    if head == "liger" and device_type != "cuda":
        raise ValueError("head 'liger' needs a CUDA device")
    return head


def linear_cross_entropy_per_sample(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_tokens: int | None = None,
    head: str = "chunked",
) -> torch.Tensor:
    """``per_sample_cross_entropy(hidden @ weight.T, labels)`` without materialising the logits.

    ``hidden`` is (batch, seq, hidden), ``labels`` (batch, seq) aligned with the inputs (the
    shift happens here; -100 is left out). Only tokens with a target go through the head, in
    chunks of ``chunk_tokens`` (default: ``default_chunk_tokens(vocab)``). Returns fp32 (batch,).
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not match")
    head = resolve_head(head, hidden.device.type)
    batch, seq, width = hidden.shape
    chunk_tokens = chunk_tokens or default_chunk_tokens(weight.shape[0])
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1")
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    flat_targets = shifted.reshape(-1)
    rows = torch.nonzero(flat_targets != IGNORE_INDEX).squeeze(1)
    selected = hidden.reshape(batch * seq, width).index_select(0, rows)
    targets = flat_targets.index_select(0, rows)
    if head == "liger":
        losses = _liger_token_losses(selected, weight, targets)
    elif weight.requires_grad and torch.is_grad_enabled():
        losses = _checkpointed_token_losses(selected, weight, targets, chunk_tokens)
    else:
        want_grad = torch.is_grad_enabled() and selected.requires_grad
        losses = _LinearCrossEntropy.apply(selected, weight, targets, chunk_tokens, want_grad)
    sums = torch.zeros(batch, dtype=torch.float32, device=hidden.device).index_add(
        0, torch.div(rows, seq, rounding_mode="floor"), losses.float())
    counts = (shifted != IGNORE_INDEX).sum(dim=1)
    return sums / counts.clamp(min=1)


# ---------------------------------------------------------------------------- the model

def causal_lm(model):
    """The Hugging Face causal LM inside a PEFT model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_fast_head(model) -> bool:
    """True when the model's logits are a plain bias-free linear map of its decoder's output."""
    lm = causal_lm(model)
    config = lm.config
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    head = lm.get_output_embeddings()
    return head is not None and getattr(head, "bias", None) is None and hasattr(lm, lm.base_model_prefix)


def model_per_sample_cross_entropy(model, batch: dict, *, head: str = "auto", chunk_tokens: int | None = None):
    """Per-sample mean next-token cross-entropy of ``batch`` through the chunked head.

    The same quantity as ``per_sample_cross_entropy(model(...).logits, labels)``; a model whose
    head is not a plain linear layer (``supports_fast_head``) takes that plain path.
    """
    if not supports_fast_head(model):
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return per_sample_cross_entropy(output.logits, batch["labels"])
    lm = causal_lm(model)
    backbone = getattr(lm, lm.base_model_prefix)
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      use_cache=False).last_hidden_state
    return linear_cross_entropy_per_sample(hidden, lm.get_output_embeddings().weight, batch["labels"],
                                           chunk_tokens=chunk_tokens, head=head)


# ---------------------------------------------------------------------------- modes

@dataclass(frozen=True)
class StepMode:
    """How much of the step is recomputed: ``checkpointed_layers`` of the adapted layers."""

    name: str  # fast | selective | small
    checkpointed_layers: int
    adapted_layers: int
    estimate_gb: float
    budget_gb: float | None
    fits: bool
    fused_kernels: bool
    chunk_tokens: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def fused_kernels_available(device: str, model_type: str) -> bool:
    """Liger's fused RMSNorm / SwiGLU / RoPE apply: CUDA, ``liger_kernel`` installed, a known model type."""
    return device.startswith("cuda") and model_type in LIGER_PATCHES and liger_available()


def estimate_mode_gb(architecture: Architecture, batch_size: int, seq_length: int, lora: LoraSettings,
                     device: str, checkpointed_layers: int, *, fused_kernels: bool, chunk_tokens: int) -> float:
    """The memory estimate of the fast step with ``checkpointed_layers`` adapted layers recomputed."""
    return estimate_for_device(
        architecture, device, batch_size=batch_size, seq_length=seq_length, lora_rank=lora.rank,
        lora_layers=lora.layers, grad_checkpoint=checkpointed_layers > 0, checkpointed_layers=checkpointed_layers,
        logits_chunk_tokens=chunk_tokens, fused_kernels=fused_kernels,
    ).total_gb


def mode_with(architecture: Architecture, batch_size: int, seq_length: int, lora: LoraSettings, device: str,
              checkpointed_layers: int, *, budget_gb: float | None = None, fused_kernels: bool | None = None,
              reason: str | None = None) -> StepMode:
    """The step mode that recomputes ``checkpointed_layers`` adapted layers (clamped to [0, adapted])."""
    adapted = min(lora.layers, architecture.num_hidden_layers)
    count = max(0, min(checkpointed_layers, adapted))
    if fused_kernels is None:
        fused_kernels = fused_kernels_available(device, architecture.model_type)
    chunk = default_chunk_tokens(architecture.vocab_size)
    estimate = estimate_mode_gb(architecture, batch_size, seq_length, lora, device, count,
                                fused_kernels=fused_kernels, chunk_tokens=chunk)
    name = "fast" if count == 0 else "small" if count == adapted else "selective"
    fits = budget_gb is None or estimate <= budget_gb
    if reason is None:
        reason = f"{name}: {count} of {adapted} adapted layers recomputed in the backward pass; estimated {estimate:.1f} GB"
        if budget_gb is not None:
            reason += f" of {budget_gb:.1f} GB"
    return StepMode(name, count, adapted, round(estimate, 3), budget_gb, fits, fused_kernels, chunk, reason)


def choose_mode(architecture: Architecture, batch_size: int, seq_length: int, lora: LoraSettings, device: str,
                budget_gb: float, *, fused_kernels: bool | None = None) -> StepMode:
    """The fastest mode whose memory estimate fits ``budget_gb``: the fewest recomputed layers.

    When even ``small`` does not fit, returns ``small`` with ``fits=False`` and says so.
    """
    if not budget_gb > 0:
        raise ValueError(f"budget_gb={budget_gb!r} must be a positive number of GB")
    adapted = min(lora.layers, architecture.num_hidden_layers)
    if fused_kernels is None:
        fused_kernels = fused_kernels_available(device, architecture.model_type)

    def estimate(count: int) -> float:
        return mode_with(architecture, batch_size, seq_length, lora, device, count,
                         fused_kernels=fused_kernels).estimate_gb

    shape = f"batch {batch_size} x {seq_length} tokens, LoRA rank {lora.rank} on {adapted} layers"
    fast = estimate(0)
    if fast <= budget_gb:
        return mode_with(architecture, batch_size, seq_length, lora, device, 0, budget_gb=budget_gb,
                         fused_kernels=fused_kernels,
                         reason=f"fast: nothing recomputed; {shape} is estimated at {fast:.1f} GB, "
                                f"within the {budget_gb:.1f} GB budget")
    for count in range(1, adapted + 1):
        needed = estimate(count)
        if needed <= budget_gb:
            name = "small" if count == adapted else "selective"
            return mode_with(
                architecture, batch_size, seq_length, lora, device, count, budget_gb=budget_gb,
                fused_kernels=fused_kernels,
                reason=f"{name}: {count} of {adapted} adapted layers recomputed in the backward pass so that "
                       f"{shape} fits the {budget_gb:.1f} GB budget (estimated {needed:.1f} GB; "
                       f"{fast:.1f} GB without recomputation)",
            )
    needed = estimate(adapted)
    return mode_with(
        architecture, batch_size, seq_length, lora, device, adapted, budget_gb=budget_gb,
        fused_kernels=fused_kernels,
        reason=f"small: {shape} is estimated at {needed:.1f} GB even with every adapted layer recomputed, "
               f"above the {budget_gb:.1f} GB budget; lower the batch size or the sequence length",
    )


# ---------------------------------------------------------------------------- preparing a model

@dataclass
class StepSetup:
    """What ``prepare_step`` did to a model."""

    mode: StepMode | None
    fused_kernels: bool
    autocast_dtype: torch.dtype | None  # LoRA matmuls run in this dtype (fp32 adapters, bf16 model)
    checkpointed_layers: list[int] = field(default_factory=list)  # decoder layer indices recomputed
    notes: list[str] = field(default_factory=list)


def decoder_layers(model) -> list:
    """The decoder layers of a PEFT-wrapped (or plain) Hugging Face causal LM."""
    lm = causal_lm(model)
    backbone = getattr(lm, lm.base_model_prefix, None)
    layers = getattr(backbone, "layers", None)
    if layers is None:
        raise ValueError(f"{type(lm).__name__} has no decoder layers at .{lm.base_model_prefix}.layers")
    return list(layers)


def adapted_layer_indices(model) -> list[int]:
    """Indices of the decoder layers holding trainable (LoRA) parameters."""
    return [index for index, layer in enumerate(decoder_layers(model))
            if any(parameter.requires_grad for parameter in layer.parameters())]


def apply_fused_kernels(model) -> None:
    """Liger's fused RMSNorm, SwiGLU and RoPE on ``model`` (no cross-entropy patch: the head is ours).

    Liger replaces RoPE in the model type's ``transformers`` module, i.e. for every model of
    that type in this process.
    """
    import liger_kernel.transformers as liger

    lm = causal_lm(model)
    patch = getattr(liger, LIGER_PATCHES[lm.config.model_type])
    patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=lm)


def _checkpoint_forward(layer) -> None:
    """Recompute ``layer`` in the backward pass (non-reentrant: its inputs need no gradient)."""
    from torch.utils.checkpoint import checkpoint

    forward = layer.forward

    @functools.wraps(forward)
    def checkpointed(*args, **kwargs):
        if layer.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    layer.forward = checkpointed


def _autocast_forward(module, device_type: str, dtype: torch.dtype) -> None:
    forward = module.forward

    @functools.wraps(forward)
    def autocast(*args, **kwargs):
        with torch.autocast(device_type=device_type, dtype=dtype):
            return forward(*args, **kwargs)

    module.forward = autocast


def prepare_step(model, mode: StepMode | None = None, *, fused_kernels: bool | None = None) -> StepSetup:
    """Apply ``mode`` to a PEFT model loaded without gradient checkpointing.

    * fused kernels (``mode.fused_kernels``; default: when available on the model's device);
    * fp32 LoRA adapters on a bf16/fp16 model compute in the model's dtype under autocast
      (adapter weights, gradients and optimizer state stay fp32);
    * ``mode.checkpointed_layers`` of the adapted layers (the lowest ones) are recomputed in
      the backward pass. ``None``: the fast mode (nothing recomputed).
    """
    lm = causal_lm(model)
    if any(getattr(layer, "gradient_checkpointing", False) for layer in decoder_layers(model)):
        raise ValueError("load the model without gradient checkpointing: the step mode decides what is recomputed")
    parameter = next(lm.parameters())
    device = parameter.device
    notes: list[str] = []

    if fused_kernels is None:
        fused_kernels = mode.fused_kernels if mode is not None else fused_kernels_available(
            str(device), lm.config.model_type)
    if fused_kernels:
        if not fused_kernels_available(str(device), lm.config.model_type):
            raise ValueError(f"fused kernels need CUDA, liger_kernel and a model of type "
                             f"{', '.join(LIGER_PATCHES)} (got {lm.config.model_type} on {device})")
        apply_fused_kernels(model)
        notes.append("fused RMSNorm, SwiGLU and RoPE (Liger-Kernel)")

    base_dtype = lm.get_input_embeddings().weight.dtype
    adapter_dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    autocast_dtype = None
    if base_dtype in (torch.bfloat16, torch.float16) and adapter_dtypes - {base_dtype}:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False  # inputs stay in the model's dtype
        _autocast_forward(getattr(lm, lm.base_model_prefix), device.type, base_dtype)
        autocast_dtype = base_dtype
        notes.append(f"LoRA matmuls in {str(base_dtype).replace('torch.', '')} (adapters and optimizer state fp32)")

    adapted = adapted_layer_indices(model)
    count = 0 if mode is None else min(mode.checkpointed_layers, len(adapted))
    chosen = adapted[:count]
    layers = decoder_layers(model)
    for index in chosen:
        _checkpoint_forward(layers[index])
    if chosen:
        notes.append(f"{len(chosen)} of {len(adapted)} adapted layers recomputed in the backward pass")
    return StepSetup(mode=mode, fused_kernels=fused_kernels, autocast_dtype=autocast_dtype,
                     checkpointed_layers=chosen, notes=notes)

"""The fast LoRA training step: a chunked head, fused kernels, and recomputation sized to a budget.

These make a LoRA step on a large model faster or smaller than the plain
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
* **q/k/v LoRA A as one matmul** (``share_qkv_lora_a``): the three projections read the same
  hidden states, so ``x @ cat(A_q, A_k, A_v).T`` replaces three thin matmuls (and six in the
  backward pass by two); the gradients land on PEFT's own ``lora_A`` weights.
* **LoRA B added in the matmul's epilogue** (``fuse_lora_add``): each projection's
  ``scaling * (x A^T) B^T`` is one ``addmm_`` onto its base output, instead of a matmul, a
  scaling pass and an addition pass over (tokens x out_features) -- and a scaling pass in the
  backward.
* **The head's cross-entropy as one Triton kernel** on CUDA (``your_ai.step.head_kernel``): each
  chunk's loss and its gradient with respect to the logits, written over the logits, with no
  fp32 copy of them.
* **Recomputation sized to a budget** (``choose_mode``, in ``your_ai.step.modes`` and
  re-exported here): ``fast`` recomputes nothing, ``small`` recomputes every adapted layer in
  the backward pass, ``selective`` recomputes only as many adapted layers as the memory
  estimate needs. Layers below the first adapter keep nothing for the backward pass in every
  mode. ``select_step_mode`` turns a ``--step-mode`` into a ``StepMode`` with its reason.

``prepare_step(model, mode)`` applies the kernels and the recomputation to a PEFT model;
``model_per_sample_cross_entropy(model, batch)`` is the per-sample cross-entropy the distrust
objective takes (``your_ai.train.loss.compute_loss(..., fast_head=True)`` uses it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from your_ai.step import head_kernel
from your_ai.objective.distrust import IGNORE_INDEX, per_sample_cross_entropy
from your_ai.step.modes import (  # noqa: F401 -- the mode chooser, re-exported with the step it configures
    CHUNK_FP32_BYTES,
    LIGER_PATCHES,
    MODE_NAMES,
    PLAIN_HEAD_MODEL_TYPES,
    STEP_MODES,
    StepMode,
    choose_mode,
    default_chunk_tokens,
    estimate_mode_gb,
    fused_kernels_available,
    liger_available,
    mode_with,
    plain_mode,
    resumed_mode,
    select_step_mode,
)

HEADS = ("auto", "chunked", "torch", "liger")


# ---------------------------------------------------------------------------- the chunked head

def _chunk_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, want_grad: bool,
                  kernel: bool = True):
    """Per-token cross-entropy of one chunk and, with ``want_grad``, d loss_t / d hidden_t per row.

    With ``kernel``, where ``head_kernel.applies`` (CUDA with Triton), the loss and the gradient
    with respect to the logits come from one Triton kernel that writes that gradient over the
    logits; otherwise from PyTorch ops on an fp32 copy of the logits."""
    logits = F.linear(hidden, weight)
    if kernel and head_kernel.applies(logits):
        losses = head_kernel.cross_entropy_rows(logits, targets, want_grad)
        return losses, (logits @ weight if want_grad else None)
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
    def forward(ctx, hidden, weight, targets, chunk_tokens, want_grad, kernel):
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grads = torch.empty_like(hidden) if want_grad else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            stop = start + chunk_tokens
            losses[start:stop], chunk_grad = _chunk_losses(hidden[start:stop], weight, targets[start:stop], want_grad,
                                                           kernel)
            if want_grad:
                grads[start:stop] = chunk_grad
        if want_grad:
            ctx.save_for_backward(grads)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (grads,) = ctx.saved_tensors
        return (grads * grad_losses[:, None]).to(grads.dtype), None, None, None, None, None


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


def resolve_head(head: str, device_type: str) -> str:
    """``auto`` is ``chunked``: on an H100 it ran config S at 17,863 tokens/s against 14,742 with
    Liger's per-token fused linear cross-entropy, and tied on config T (bench/RESULTS.md).
    ``chunked`` takes each chunk's loss and gradient from ``head_kernel`` where it applies (CUDA);
    ``torch`` is the same chunked head with PyTorch ops everywhere."""
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
        losses = _LinearCrossEntropy.apply(selected, weight, targets, chunk_tokens, want_grad, head == "chunked")
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


# ---------------------------------------------------------------------------- preparing a model

@dataclass
class StepSetup:
    """What ``prepare_step`` did to a model."""

    mode: StepMode | None
    fused_kernels: bool
    autocast_dtype: torch.dtype | None  # LoRA matmuls run in this dtype (fp32 adapters, bf16 model)
    checkpointed_layers: list[int] = field(default_factory=list)  # decoder layer indices recomputed
    notes: list[str] = field(default_factory=list)
    shared_lora_a_layers: list[int] = field(default_factory=list)  # q/k/v LoRA A as one matmul here
    fused_add_layers: list[int] = field(default_factory=list)  # LoRA B products added in an addmm epilogue here


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
    """Fused SwiGLU and RoPE (Liger-Kernel) and RMSNorm (``torch_rms_norm``) on ``model`` (no
    cross-entropy patch: the head is ours).

    Liger swaps the norm and MLP modules of this model instance, but it also rebinds classes and
    the RoPE function in the model type's ``transformers`` module, which would reach every model
    of that type built later in the process, CPU ones included (where Triton cannot run). So the
    module is put back as it was, except RoPE, which becomes a dispatcher: Liger's kernel for
    CUDA tensors, the original function for any other.
    """
    import importlib

    import liger_kernel.transformers as liger

    lm = causal_lm(model)
    module = importlib.import_module(type(lm).__module__)
    saved = dict(vars(module))
    patch = getattr(liger, LIGER_PATCHES[lm.config.model_type])
    patch(rope=True, rms_norm=False, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=lm)
    torch_rms_norm(lm)
    fused_rope = module.apply_rotary_pos_emb
    for key, value in saved.items():
        if vars(module).get(key) is not value:
            setattr(module, key, value)
    original_rope = getattr(saved["apply_rotary_pos_emb"], "original", saved["apply_rotary_pos_emb"])
    if fused_rope is not original_rope and not hasattr(saved["apply_rotary_pos_emb"], "original"):
        module.apply_rotary_pos_emb = _cuda_only(fused_rope, original_rope)


def torch_rms_norm(model) -> int:
    """Every RMSNorm module of ``model`` (Llama, Mistral, Qwen2) through ``torch.nn.functional.rms_norm``:
    one fused kernel on CUDA that saves what Liger's saves (the input and the inverse RMS), for a
    fraction of the host time per call. Short steps are bound by the host launching kernels: on an
    H100, Liger's RMSNorm took 150-225 us of host time per call, 12-17 ms of a 90-125 ms 7B step, for
    1 ms of GPU time. Sets the modules' own forwards (no class is patched); returns how many."""
    count = 0
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = functools.partial(_rms_norm_forward, module)
            count += 1
    return count


def _rms_norm_forward(module, hidden_states: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(hidden_states, (hidden_states.shape[-1],), module.weight, module.variance_epsilon)


def _cuda_only(fused, original):
    """``fused`` for CUDA tensors, ``original`` otherwise (same signature)."""

    @functools.wraps(original)
    def dispatch(q, k, *args, **kwargs):
        return (fused if q.is_cuda else original)(q, k, *args, **kwargs)

    dispatch.original = original
    return dispatch


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


# ---------------------------------------------------------------------------- LoRA projections

QKV_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def plain_lora_adapter(module) -> str | None:
    """The adapter a PEFT ``lora.Linear`` runs when it is plain LoRA: one active adapter, not
    disabled or merged, no variant (DoRA, ...), no dropout, bias-free A and B matmuls. ``None``
    otherwise (PEFT's own forward then runs)."""
    if module.disable_adapters or module.merged or len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    if name not in module.lora_A or name in getattr(module, "lora_variant", {}):
        return None
    if getattr(module, "use_dora", {}).get(name, False):
        return None
    dropout = module.lora_dropout[name]
    if not isinstance(dropout, torch.nn.Identity) and getattr(dropout, "p", 1.0) != 0:
        return None
    if not all(isinstance(layer, torch.nn.Linear) and layer.bias is None
               for layer in (module.lora_A[name], module.lora_B[name])):
        return None
    return name


def base_plus_lora(module, name: str, x: torch.Tensor, product: torch.Tensor) -> torch.Tensor:
    """``module.base_layer(x) + scaling * product @ B.T`` with the LoRA B matmul adding onto the
    base output in its epilogue (``addmm_``, in place): no separate scaling and addition passes
    over the (tokens x out_features) output, in the forward or the backward pass. ``product`` is
    ``x``'s LoRA A product. The same numbers as PEFT's ``result + lora_B(product) * scaling``
    (the sum is rounded once instead of three times)."""
    flat = module.base_layer(x.reshape(-1, x.shape[-1]))
    weight = module.lora_B[name].weight
    flat.addmm_(product.reshape(-1, product.shape[-1]).to(flat.dtype), weight.to(flat.dtype).t(),
                alpha=module.scaling[name])
    return flat.view(*x.shape[:-1], flat.shape[-1])


class _SharedLoraA:
    """The LoRA A products of one attention module's q/k/v projections as one matmul.

    ``q_proj``, ``k_proj`` and ``v_proj`` of a Llama-family attention module all read the same
    ``hidden_states``, so ``x @ cat(A_q, A_k, A_v).T`` gives the three (batch, seq, r) products at
    once; each projection then adds its B product to its base output (``_LoraProjectionForward``).
    Gradients reach PEFT's own ``lora_A`` weights through the concatenation, so the optimizer,
    checkpoints and saved adapters see nothing different.

    The cache lives for one call of the attention module's forward (cleared in ``finally``, so a
    checkpoint's recomputation, which re-runs that forward, starts clean): the first projection
    called inside it computes the shared product when every condition holds (plain LoRA in all
    three, the same adapter and rank); a projection called with another tensor, with extra
    arguments, or outside an attention call computes its own. Callables, not closures, so a deep
    copy of the model stays consistent.
    """

    def __init__(self, attention, projections: dict):
        self.attention = attention
        self.projections = projections
        self.active = False
        self.input = None
        self.pieces = None

    def adapter(self) -> str | None:
        """The adapter all three projections run, when the shared product applies to them."""
        name, rank, weight = None, None, None
        for module in self.projections.values():
            current = plain_lora_adapter(module)
            if current is None:
                return None
            lora_a = module.lora_A[current]
            if name is None:
                name, rank, weight = current, module.r[current], lora_a.weight
            elif (current != name or module.r[current] != rank or lora_a.weight.dtype != weight.dtype
                  or lora_a.weight.device != weight.device or lora_a.weight.shape[1] != weight.shape[1]):
                return None
        return name

    def shared_pieces(self, x: torch.Tensor):
        name = self.adapter()
        if name is None:
            return None
        modules = list(self.projections.values())
        weights = [module.lora_A[name].weight for module in modules]
        x = modules[0]._cast_input_dtype(x, weights[0].dtype)
        product = F.linear(x, torch.cat(weights))
        return name, dict(zip(self.projections, product.split([w.shape[0] for w in weights], dim=-1)))


class _SharedAttentionForward:
    """The attention module's forward with the q/k/v cache open for the duration of the call."""

    def __init__(self, shared: _SharedLoraA, forward):
        self.shared = shared
        self.forward = forward

    def __call__(self, *args, **kwargs):
        shared = self.shared
        shared.active, shared.input, shared.pieces = True, None, None
        try:
            return self.forward(*args, **kwargs)
        finally:
            shared.active, shared.input, shared.pieces = False, None, None


class _LoraProjectionForward:
    """A LoRA projection's forward: its A product from the shared q/k/v matmul when there is one
    (``shared``), and with ``fuse_add`` its B product added in the base output's epilogue
    (``base_plus_lora``); PEFT's forward (``forward``) whenever the adapter is not plain LoRA
    or the call has extra arguments."""

    def __init__(self, module, forward, *, shared: _SharedLoraA | None = None, key: str | None = None,
                 fuse_add: bool = True):
        self.module = module
        self.forward = forward
        self.shared = shared
        self.key = key
        self.fuse_add = fuse_add

    def __call__(self, x, *args, **kwargs):
        if args or kwargs:
            return self.forward(x, *args, **kwargs)
        module, shared, product = self.module, self.shared, None
        if shared is not None and shared.active:
            if shared.input is None:  # the first projection of this attention call
                shared.input, shared.pieces = x, shared.shared_pieces(x)
            if shared.input is x and shared.pieces is not None:
                name, pieces = shared.pieces
                product = pieces[self.key]
        if product is None:
            name = plain_lora_adapter(module) if self.fuse_add else None
            if name is None:
                return self.forward(x)
            product = module.lora_A[name](module._cast_input_dtype(x, module.lora_A[name].weight.dtype))
        if self.fuse_add:
            return base_plus_lora(module, name, x, product)
        result = module.base_layer(x)
        return (result + module.lora_B[name](product) * module.scaling[name]).to(result.dtype)


def _lora_linears(layer) -> dict:
    from peft.tuners.lora import Linear as LoraLinear

    return {name: module for name, module in layer.named_modules() if isinstance(module, LoraLinear)}


def _wrapped(module) -> bool:
    return isinstance(module.__dict__.get("forward"), (_LoraProjectionForward, _SharedAttentionForward))


def share_qkv_lora_a(model, *, fuse_add: bool = True) -> list[int]:
    """Compute q/k/v's LoRA A products as one matmul in every decoder layer where all three carry
    one adapter of the same rank (``_SharedLoraA``), with ``fuse_add`` their B products added in
    the base matmuls' epilogue; returns those layers' indices. Idempotent; ``unshare_qkv_lora_a``
    puts PEFT's forwards back."""
    from peft.tuners.lora import Linear as LoraLinear

    indices = []
    for index, layer in enumerate(decoder_layers(model)):
        attention = getattr(layer, "self_attn", None)
        if attention is None:
            continue
        if isinstance(attention.__dict__.get("forward"), _SharedAttentionForward):
            indices.append(index)
            continue
        projections = {key: getattr(attention, key, None) for key in QKV_PROJECTIONS}
        if not all(isinstance(module, LoraLinear) and not _wrapped(module) for module in projections.values()):
            continue
        shared = _SharedLoraA(attention, projections)
        if shared.adapter() is None:
            continue
        attention.forward = _SharedAttentionForward(shared, attention.forward)
        for key, module in projections.items():
            module.forward = _LoraProjectionForward(module, module.forward, shared=shared, key=key, fuse_add=fuse_add)
        indices.append(index)
    return indices


def fuse_lora_add(model) -> list[int]:
    """Every other LoRA projection of the decoder layers adds its B product in its base matmul's
    epilogue (``base_plus_lora``) whenever its adapter is plain LoRA; returns the layers where one's
    adapter is plain now. Idempotent;
    ``unfuse_lora_add`` puts PEFT's forwards back."""
    indices = []
    for index, layer in enumerate(decoder_layers(model)):
        modules = _lora_linears(layer).values()
        for module in modules:
            if not _wrapped(module):
                module.forward = _LoraProjectionForward(module, module.forward)
        if any(isinstance(module.__dict__["forward"], _LoraProjectionForward) and module.__dict__["forward"].fuse_add
               and plain_lora_adapter(module) is not None for module in modules):
            indices.append(index)
    return indices


def _restore(module) -> None:
    inner = module.__dict__["forward"].forward
    if getattr(inner, "__self__", None) is module and getattr(inner, "__func__", None) is type(module).forward:
        del module.forward  # the class's forward again
    else:
        module.forward = inner


def unshare_qkv_lora_a(model) -> int:
    """Undo ``share_qkv_lora_a``: PEFT's own q/k/v forwards again; returns the layers restored."""
    restored = 0
    for layer in decoder_layers(model):
        attention = getattr(layer, "self_attn", None)
        wrapper = None if attention is None else attention.__dict__.get("forward")
        if not isinstance(wrapper, _SharedAttentionForward):
            continue
        for module in [attention, *wrapper.shared.projections.values()]:
            _restore(module)
        restored += 1
    return restored


def unfuse_lora_add(model) -> int:
    """Undo ``fuse_lora_add``: PEFT's own forwards on the LoRA projections not sharing q/k/v's A
    product; returns how many."""
    restored = 0
    for layer in decoder_layers(model):
        for module in _lora_linears(layer).values():
            wrapper = module.__dict__.get("forward")
            if isinstance(wrapper, _LoraProjectionForward) and wrapper.shared is None:
                _restore(module)
                restored += 1
    return restored


def prepare_step(model, mode: StepMode | None = None, *, fused_kernels: bool | None = None,
                 share_lora_a: bool = True, fuse_add: bool = True) -> StepSetup:
    """Apply ``mode`` to a PEFT model loaded without gradient checkpointing.

    * fused kernels (``mode.fused_kernels``; default: when available on the model's device);
    * fp32 LoRA adapters on a bf16/fp16 model compute in the model's dtype under autocast
      (adapter weights, gradients and optimizer state stay fp32);
    * ``mode.checkpointed_layers`` of the adapted layers (the lowest ones) are recomputed in
      the backward pass. ``None``: the fast mode (nothing recomputed);
    * with ``share_lora_a``, q/k/v's LoRA A products as one matmul on their shared input
      (``share_qkv_lora_a``; ``unshare_qkv_lora_a`` undoes it), where the adapters allow it;
    * with ``fuse_add``, each LoRA projection's B product added in the epilogue of one matmul onto
      its base output (``base_plus_lora``; ``fuse_lora_add``), where the adapter is plain LoRA.
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
        notes.append("fused SwiGLU and RoPE (Liger-Kernel) and RMSNorm (PyTorch)")

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
    shared = share_qkv_lora_a(model, fuse_add=fuse_add) if share_lora_a else []
    if shared:
        notes.append(f"q/k/v LoRA A products as one matmul in {len(shared)} of {len(adapted)} adapted layers")
    fused_add = fuse_lora_add(model) if fuse_add else []
    if fused_add:
        notes.append(f"LoRA B products added in the base matmuls' epilogue in {len(fused_add)} of {len(adapted)} "
                     f"adapted layers")
    return StepSetup(mode=mode, fused_kernels=fused_kernels, autocast_dtype=autocast_dtype,
                     checkpointed_layers=chosen, notes=notes, shared_lora_a_layers=shared,
                     fused_add_layers=fused_add)

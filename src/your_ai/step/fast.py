"""The fast LoRA training step: ``prepare_step(model, mode)`` applies a ``StepMode`` to a PEFT model.

Each part makes a LoRA step on a large model faster or smaller than the plain
``model(...).logits`` -> cross-entropy step, and each gives the same numbers:

* **The chunked linear + cross-entropy head** (``your_ai.step.head``): the loss without the full
  logits; ``model_per_sample_cross_entropy`` is what ``compute_loss(..., fast_head=True)`` takes.
* **Fused kernels** on CUDA when ``liger_kernel`` is installed: RMSNorm, SwiGLU and RoPE
  (``apply_fused_kernels``). LoRA adapters stay in fp32 (their optimizer state too) while their
  matmuls run in the model's bf16 under ``torch.autocast``, so they keep no fp32 copies of
  their inputs.
* **LoRA projections in fewer passes** (``your_ai.step.fused_lora``): q/k/v's LoRA A products as
  one matmul, LoRA B products added in the base matmul's epilogue.
* **Recomputation sized to a budget** (``your_ai.step.modes``): ``fast`` recomputes nothing,
  ``small`` recomputes every adapted layer in the backward pass, ``selective`` only as many adapted
  layers as the memory estimate needs. Layers below the first adapter keep nothing for the backward
  pass in every mode.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from your_ai.model.meta import decoder_layers
from your_ai.step.fused_lora import fuse_lora_add, share_qkv_lora_a
from your_ai.step.head import causal_lm
from your_ai.step.modes import LIGER_PATCHES, StepMode, fused_kernels_available


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
    fraction of the host time per call (short steps are bound by the host launching kernels). Sets
    the modules' own forwards (no class is patched); returns how many."""
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
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"{type(lm).__name__} names no decoder layers (its _no_split_modules)")
    if any(getattr(layer, "gradient_checkpointing", False) for layer in layers):
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

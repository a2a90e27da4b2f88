"""LoRA projections in fewer passes: q/k/v's LoRA A products as one matmul, and each LoRA B product added
in the epilogue of the matmul onto its base output. The same numbers as PEFT's forwards.

* **q/k/v LoRA A as one matmul** (``share_qkv_lora_a``): the three projections read the same hidden
  states, so ``x @ cat(A_q, A_k, A_v).T`` replaces three thin matmuls (and six in the backward pass by
  two); the gradients land on PEFT's own ``lora_A`` weights.
* **LoRA B added in the matmul's epilogue** (``fuse_lora_add``): each projection's
  ``scaling * (x A^T) B^T`` is one ``addmm_`` onto its base output, instead of a matmul, a scaling pass
  and an addition pass over (tokens x out_features) -- and a scaling pass in the backward.

Both set forwards on the module instances (no class is patched); ``unshare_qkv_lora_a`` and
``unfuse_lora_add`` put PEFT's back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from your_ai.model.meta import decoder_layers

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

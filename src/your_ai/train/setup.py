"""How a run starts: the model loaded for training (LoRA on its device), the step mode applied, the
optimizer, and the checks and choices that need the model's shape (LoRA rank, sharding).

``load_for_training`` and ``apply_step_mode`` are usable on their own: the fit test builds its model
with them, as ``train`` does.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from your_ai.hardware import training_dtype
from your_ai.model import quantize as nf4
from your_ai.model.architecture import (
    architecture_from_config,
    build_config,
    build_random_model,
    read_architecture,
)
from your_ai.model.errors import InvalidModelNameError
from your_ai.model.load import build_model_from_config, load_model, load_tokenizer
from your_ai.model.lora import LoraSettings, apply_lora
from your_ai.model.meta import parameters_on_meta
from your_ai.model.presets import PRESETS
from your_ai.model.quantize import QuantizationError
from your_ai.model.resolve import ResolvedModel, resolve_model
from your_ai.step import fast as fast_step
from your_ai.step.head import supports_fast_head
from your_ai.step.memory import StepShape, sharding_saves_gb
from your_ai.step.modes import MODE_NAMES, StepMode, resumed_mode, select_step_mode
from your_ai.train.args import TrainingArgs, TrainingArgsError, TrainingError
from your_ai.train.defaults import DEFAULTS
from your_ai.train.parallel import World, pick_strategy


@dataclass
class TrainingModel:
    """A model ready to train: PEFT-wrapped, on its device, in its training dtype."""

    model: Any  # peft.PeftModel
    tokenizer: Any  # None for a synthetic (random-weight) model
    resolved: ResolvedModel | None  # None for a synthetic model
    architecture_name: str  # e.g. "LlamaForCausalLM"
    dtype: torch.dtype
    notes: list[str] = field(default_factory=list)


def load_for_training(
    model: str,
    lora: LoraSettings,
    device: str,
    *,
    grad_checkpoint: bool = False,
    synthetic: bool = False,
    trust_remote_code: bool = False,
    quantize: int | None = None,
    seed: int = 0,
    on_meta: bool = False,
    attn_implementation: str | None = None,
) -> TrainingModel:
    """Resolve and load ``model`` (or build a random-weight copy of preset ``model`` when
    ``synthetic``) in ``training_dtype(device)`` on ``device``, and wrap it with fresh LoRA adapters
    (``lora.reset_adapters`` with ``seed``).

    ``quantize`` 4: the decoder layers' linear weights in NF4 (QLoRA, ``your_ai.model.quantize``), built or
    read one tensor at a time. ``on_meta``: the model's parameters on the meta device, nothing read
    or allocated (``Strategy.load`` shards and fills them). ``attn_implementation``: transformers' attention
    kernel for the model (None: the one transformers picks). Resolution errors
    (``ModelNotAvailableError``, ``InvalidModelNameError``) propagate.
    """
    dtype = training_dtype(device)
    notes: list[str] = []
    if quantize:
        if on_meta:
            raise QuantizationError("--quantize 4 builds its 4-bit weights whole on each process; it cannot start "
                                    "from sharded weights")
        nf4.check_available()
    resolved = None if synthetic else resolve_model(model)
    tokenizer = None if synthetic else load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    base = _base_model(model, resolved, dtype, device, quantize=quantize, on_meta=on_meta,
                       trust_remote_code=trust_remote_code)
    if quantize:
        if device.startswith("cuda"):
            nf4.use_compiled_dequantization(base)
        summary = nf4.quantized_summary(base)
        notes.append(f"QLoRA: {summary['quantized_tensors']} linear weights of the decoder layers in NF4 "
                     f"({summary['quantized_weights']:,} weights); the model's weights take "
                     f"{summary['weight_bytes'] / 1e9:.2f} GB")
    base.config.use_cache = False
    if attn_implementation is not None:
        base.set_attn_implementation(attn_implementation)
    if grad_checkpoint:
        _enable_checkpointing(base)
    with parameters_on_meta() if on_meta else nullcontext(), warnings.catch_warnings():
        # PEFT asks transformers a deprecated question; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model, note = apply_lora(base, lora, seed)
    if note:
        notes.append(note)
    return TrainingModel(
        model=peft_model,
        tokenizer=tokenizer,
        resolved=resolved,
        architecture_name=type(base).__name__,
        dtype=dtype,
        notes=notes,
    )


def _base_model(model: str, resolved: ResolvedModel | None, dtype: torch.dtype, device: str, *,
                quantize: int | None, on_meta: bool, trust_remote_code: bool):
    """The base model: read from ``resolved``, or (``resolved`` None) a random-weight copy of preset ``model``;
    in 4-bit NF4 when ``quantize``; with its parameters on the meta device when ``on_meta``."""
    if resolved is None and model not in PRESETS:
        raise InvalidModelNameError(f"synthetic models are built from presets; {model!r} is not one of: "
                                    f"{', '.join(PRESETS)}")
    with parameters_on_meta() if on_meta else nullcontext():
        if resolved is None and quantize:
            base = nf4.build_quantized_random_model(build_config(PRESETS[model].architecture), dtype=dtype,
                                                    device=device)
        elif resolved is None:
            base = build_random_model(PRESETS[model].architecture, dtype=dtype, device=device)
        elif quantize:
            base = nf4.load_quantized_model(resolved.path, dtype=dtype, device=device,
                                            trust_remote_code=trust_remote_code)
        elif on_meta:
            base = build_model_from_config(resolved, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        else:
            base = load_model(resolved, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    if on_meta:  # tying inside the meta block makes a new tensor of the head: tie it to the embeddings again
        base.tie_weights()
    return base


def attention_for(attn_implementation: str | None, device: str) -> str | None:
    """The attention kernel a run asks transformers for: ``--attn-implementation`` when given; auto (None): the
    one transformers picks (SDPA where it can; a packed batch's block-diagonal mask is built from its positions)."""
    if attn_implementation == "flex_attention" and not device.startswith("cuda"):
        raise TrainingArgsError(f"--attn-implementation flex_attention trains on CUDA GPUs only (PyTorch's "
                                f"FlexAttention has no backward pass on {device}); use sdpa or leave it out")
    return None if attn_implementation in (None, "auto") else attn_implementation


@dataclass
class PreparedStep:
    """The step mode applied to a model: what ``compute_loss(..., fast_head=...)`` takes, and notes."""

    mode: StepMode
    fast_head: bool  # the chunked head (False: the full logits)
    notes: list[str] = field(default_factory=list)

    @property
    def chunk_tokens(self) -> int | None:
        """Tokens per chunk of the chunked head (None: the full logits)."""
        return (self.mode.chunk_tokens or None) if self.fast_head else None


def apply_step_mode(model, requested: str, lora: LoraSettings, batch_size: int, seq_length: int, device: str,
                    budget_gb: float, *, grad_checkpoint: bool = False, kept: dict | None = None,
                    quantize: int | None = None) -> PreparedStep:
    """Choose the step mode for ``requested`` (``step_modes.STEP_MODES``) and a budget, and apply it.

    ``model`` comes from ``load_for_training`` with ``grad_checkpoint`` only for ``plain`` (the plain
    step uses Hugging Face gradient checkpointing; the other modes decide what is recomputed).
    ``kept``: a ``StepMode.to_dict()`` saved with a checkpoint, reused as it was (a resumed run).
    A model whose head is not a plain linear layer trains through the full logits (the reason says so).
    """
    try:
        architecture = architecture_from_config(model.config.to_dict())
    except ValueError as error:
        raise TrainingError(f"the step mode needs the model's shape: {error}") from None
    full_logits = not supports_fast_head(model)
    shape = StepShape(architecture, batch_size, seq_length, lora.rank, lora.layers, device, quantize, dora=lora.dora)
    try:
        if kept is not None and kept.get("name") in MODE_NAMES:
            mode = resumed_mode(kept, shape, budget_gb, full_logits=full_logits)
        else:
            mode = select_step_mode(requested, shape, budget_gb, grad_checkpoint=grad_checkpoint,
                                    full_logits=full_logits)
    except ValueError as error:
        raise TrainingArgsError(str(error)) from None
    if mode.name == "plain":
        return PreparedStep(mode, False)
    try:
        setup = fast_step.prepare_step(model, mode)
    except ValueError as error:
        raise TrainingError(f"step mode {mode.name}: {error}; --step-mode plain trains this model") from None
    return PreparedStep(mode, not full_logits, setup.notes)


def _enable_checkpointing(base) -> None:
    """Recompute activations in the backward pass (non-reentrant), across transformers versions."""
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.enable_input_require_grads()


def build_optimizer(model, learning_rate: float, weight_decay: float = DEFAULTS["weight_decay"]) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.999, eps 1e-8) over the trainable (LoRA) parameters only; on CUDA and the CPU
    its fused implementation (one kernel for all parameters, faster than the default multi-tensor path)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    fused = parameters[0].device.type in ("cuda", "cpu") or None
    return torch.optim.AdamW(
        parameters, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay, fused=fused
    )


def sharding_saves(args: TrainingArgs, world: World, device: str, limit_gb: float, resolved: ResolvedModel,
                       notes: list[str]) -> float | None:
    """``None`` when the processes hold the whole model (one process, DDP); when they shard it (FSDP), the
    memory each saves. Sharded: ``--strategy fsdp``, or ``auto`` when no step mode fits the whole model
    in one device's budget (the choice is noted)."""
    asked = args.strategy or "auto"  # checked by TrainingArgs.validate
    if not world.distributed or asked == "ddp":
        return None
    architecture = read_architecture(resolved.path)
    if asked == "auto":
        shape = StepShape(architecture, args.batch_size, args.max_seq_length, args.lora_rank, args.lora_layers,
                          device, args.quantize, dora=bool(args.dora))
        smallest = select_step_mode("auto", shape, limit_gb)
        if pick_strategy(args.strategy, smallest.fits) != "fsdp":
            return None
        notes.append(f"--strategy auto: the whole model does not fit one device's {limit_gb:.2f} GB budget "
                     f"(estimated {smallest.estimate_gb:.2f} GB), so its weights are sharded (fsdp)")
    return sharding_saves_gb(architecture, device, world.size, args.quantize)

"""LoRA training under the Empirical Distrust objective: ``TrainingArgs`` and the loop.

The pieces the loop wires together are small and usable on their own (the fit probe uses
them too): ``load_for_training`` (model + LoRA on a device), ``compute_loss`` (one forward
pass -> ``LossParts``) and ``build_optimizer`` (AdamW over the trainable parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from your_ai.distrust import (
    DEFAULT_ALPHA,
    MODES,
    DistrustWeighting,
    LossParts,
    check_alpha,
    distrust_objective,
    per_sample_cross_entropy,
)
from your_ai.hardware import training_dtype
from your_ai.lora import LoraSettings, apply_lora
from your_ai.models import (
    InvalidModelNameError,
    ResolvedModel,
    build_random_model,
    load_model,
    load_tokenizer,
    resolve_model,
)
from your_ai.presets import PRESETS


# ---------------------------------------------------------------------------- model

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
) -> TrainingModel:
    """Resolve and load ``model`` (or build a random-weight copy of preset ``model`` when
    ``synthetic``) in ``training_dtype(device)`` on ``device``, and wrap it with fresh LoRA adapters.

    Resolution errors (``ModelNotAvailableError``, ``InvalidModelNameError``) propagate.
    """
    dtype = training_dtype(device)
    notes: list[str] = []
    if synthetic:
        if model not in PRESETS:
            raise InvalidModelNameError(
                f"synthetic models are built from presets; {model!r} is not one of: {', '.join(PRESETS)}"
            )
        base = build_random_model(PRESETS[model].architecture, dtype=dtype, device=device)
        tokenizer, resolved = None, None
    else:
        resolved = resolve_model(model)
        base = load_model(resolved, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    base.config.use_cache = False
    if grad_checkpoint:
        _enable_checkpointing(base)
    peft_model, note = apply_lora(base, lora)
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


def _enable_checkpointing(base) -> None:
    """Recompute activations in the backward pass (non-reentrant), across transformers versions."""
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.enable_input_require_grads()


# ---------------------------------------------------------------------------- loss

@dataclass(frozen=True)
class Objective:
    """How the distrust term enters the loss (see ``your_ai.distrust``).

    ``weighted`` needs ``weighting`` (fixed once from the training set); ``additive`` adds
    ``lambda_weight * sum(d)`` to the mean cross-entropy and changes no gradient.
    """

    mode: str = "weighted"
    alpha: float = DEFAULT_ALPHA
    lambda_weight: float = 1.0
    weighting: DistrustWeighting | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"distrust mode {self.mode!r} must be one of {', '.join(MODES)}")
        check_alpha(self.alpha)

    @classmethod
    def from_dataset(cls, mode: str, alpha: float, lambda_weight: float, auth_weights, prov_entropies) -> "Objective":
        """The objective for a training set: in weighted mode the normaliser is fixed here, once."""
        weighting = None
        if mode == "weighted":
            weighting = DistrustWeighting.from_dataset(auth_weights, prov_entropies, alpha, lambda_weight)
        return cls(mode=mode, alpha=alpha, lambda_weight=lambda_weight, weighting=weighting)


def compute_loss(model, batch: dict, objective: Objective) -> LossParts:
    """One forward pass -> total (to differentiate), mean cross-entropy and mean distrust value.

    ``batch`` holds ``input_ids``, ``attention_mask``, ``labels`` (-100 where not learned),
    ``auth_weight`` and ``prov_entropy``. Labels are not passed to the model, so the
    model computes no loss of its own.
    """
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    per_sample = per_sample_cross_entropy(output.logits, batch["labels"])
    return distrust_objective(
        per_sample,
        batch["auth_weight"],
        batch["prov_entropy"],
        mode=objective.mode,
        alpha=objective.alpha,
        lambda_weight=objective.lambda_weight,
        weighting=objective.weighting,
    )


def build_optimizer(model, learning_rate: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.999, eps 1e-8) over the trainable (LoRA) parameters only."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(
        parameters, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay
    )

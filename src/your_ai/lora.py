"""LoRA through PEFT: one config builder and one way to wrap a model, used by train and the fit probe."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 128
    alpha: float | None = None  # None: 2 * rank, as the earlier tool did
    layers: int = 16  # the last N decoder layers
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora rank={self.rank} must be >= 1")
        if self.layers < 1:
            raise ValueError(f"lora layers={self.layers} must be >= 1")

    @property
    def effective_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank


def layers_to_transform(num_hidden_layers: int, requested: int) -> tuple[list[int], str | None]:
    """Indices of the last ``requested`` layers, clamped to the model's depth, and a note if clamped."""
    used = min(requested, num_hidden_layers)
    note = None
    if used < requested:
        note = f"--lora-layers {requested} clamped to the model's {num_hidden_layers} layers"
    return list(range(num_hidden_layers - used, num_hidden_layers)), note


def lora_config(settings: LoraSettings, num_hidden_layers: int):
    """A PEFT ``LoraConfig`` for the last ``settings.layers`` layers; returns (config, clamp note)."""
    from peft import LoraConfig, TaskType

    layers, note = layers_to_transform(num_hidden_layers, settings.layers)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.rank,
        lora_alpha=settings.effective_alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        layers_to_transform=layers,
        layers_pattern="layers",
        bias="none",
    )
    return config, note


def apply_lora(model, settings: LoraSettings):
    """Wrap ``model`` with fresh LoRA adapters; returns (peft_model, clamp note or None)."""
    from peft import get_peft_model

    config, note = lora_config(settings, model.config.num_hidden_layers)
    return get_peft_model(model, config), note


def trainable_parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

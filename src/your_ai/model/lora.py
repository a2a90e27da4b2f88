"""LoRA through PEFT: one config builder and one way to wrap a model, used by train and the fit test.

With ``LoraSettings.dora`` the adapters are DoRA (weight-decomposed LoRA, PEFT's ``use_dora``): each adapted
projection also trains a magnitude vector, one value per output feature (``lora_magnitude_vector``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 128
    alpha: float | None = None  # None: 2 * rank, as the earlier tool did
    layers: int = 16  # the last N decoder layers
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    dora: bool = False  # DoRA: a trained magnitude per output feature of each adapted projection

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora rank={self.rank} must be >= 1")
        if self.layers < 1:
            raise ValueError(f"lora layers={self.layers} must be >= 1")

    @property
    def effective_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank


def check_dora(dora: bool, quantize: int | None, engine: str = "torch") -> None:
    """A ``ValueError`` naming the flags when DoRA cannot go with the other settings on ``engine``: PEFT's DoRA
    (the torch engine) reads the base weights whole, which it cannot do for 4-bit NF4 weights; mlx-lm's DoRA
    dequantizes MLX's 4-bit weights, so the MLX engine takes both."""
    if dora and quantize and engine != "mlx":
        raise ValueError(f"--dora cannot go with --quantize {quantize} on the torch engine: DoRA reads the base "
                         f"weights whole, which PEFT cannot do for 4-bit NF4 weights; leave out one of them")


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
        use_dora=settings.dora,
    )
    return config, note


def apply_lora(model, settings: LoraSettings, seed: int = 0):
    """Wrap ``model`` with fresh LoRA adapters, started by ``reset_adapters(..., seed)``;
    returns (peft_model, clamp note or None)."""
    from peft import get_peft_model

    config, note = lora_config(settings, model.config.num_hidden_layers)
    peft_model = get_peft_model(model, config)
    reset_adapters(peft_model, seed)
    start_magnitudes(peft_model)
    return peft_model, note


def reset_adapters(model, seed: int) -> int:
    """Start every LoRA adapter in ``model`` as PEFT does by default (A kaiming-uniform with a = sqrt(5),
    B zero), with A drawn on the CPU in fp32 from a generator seeded with ``seed``, in parameter order:
    the same values on any device, in any dtype, and on every process. A parameter sharded over
    processes gets this process's part of the full value; one still on the meta device is skipped
    (it is started once allocated). Returns the number of parameters set."""
    import torch

    adapted = [(name, parameter) for name, parameter in model.named_parameters()
               if "lora_A" in name or "lora_B" in name]
    starts = initial_adapter_values([(name, tuple(parameter.shape)) for name, parameter in adapted], seed)
    count = 0
    with torch.no_grad():
        for (name, parameter), full in zip(adapted, starts):
            if not parameter.is_meta:
                set_full_value(parameter, full)
                count += 1
    return count


def initial_adapter_values(named_shapes: list[tuple[str, tuple[int, ...]]], seed: int) -> list:
    """The starting value of each LoRA parameter (PEFT's names and shapes, in the model's parameter order):
    ``lora_A`` kaiming-uniform with a = sqrt(5) drawn in turn from one CPU fp32 generator seeded with
    ``seed``, ``lora_B`` zero. Every engine starts its adapters from these values."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    values = []
    for name, shape in named_shapes:
        full = torch.zeros(shape)
        if "lora_A" in name:
            torch.nn.init.kaiming_uniform_(full, a=math.sqrt(5), generator=generator)
        values.append(full)
    return values


def set_full_value(parameter, full) -> None:
    """Copy the full value ``full`` into ``parameter``; a parameter sharded over processes (a DTensor)
    takes its own part of it (no communication: every process holds ``full``)."""
    if hasattr(parameter, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        full = distribute_tensor(full, parameter.device_mesh, parameter.placements, src_data_rank=None).to_local()
        parameter = parameter.to_local()
    parameter.copy_(full)


MAGNITUDE = "lora_magnitude_vector"  # PEFT's name of DoRA's magnitude vectors


def start_magnitudes(model) -> int:
    """Start every DoRA magnitude vector of ``model`` at the row norms of its projection's base weight,
    computed in fp32 (``lora_B`` is zero at the start, so DoRA's forward then equals the base model's
    exactly, in any training dtype). A base weight sharded over processes is gathered whole, one at a time
    (every process must call this); a module still on the meta device is skipped. Returns the number of
    vectors set."""
    import torch

    count = 0
    with torch.no_grad():
        for module in model.modules():
            vectors = getattr(module, MAGNITUDE, None)
            if not vectors:
                continue
            weight = module.get_base_layer().weight
            if weight.is_meta:
                continue
            full = weight.full_tensor() if hasattr(weight, "full_tensor") else weight
            norms = full.float().norm(dim=1)
            for layer in vectors.values():
                set_full_value(layer.weight, norms.to(layer.weight.dtype))
                count += 1
    return count


def smallest_adapted_dimension(architecture, target_modules=DEFAULT_TARGET_MODULES) -> tuple[str, int]:
    """The smallest in/out dimension of the adapted projections of an ``Architecture``, named (e.g.
    ("k_proj out", 64)): the largest LoRA rank that can be used (a rank r adapter is a product of an r x in
    and an out x r matrix)."""
    shapes = architecture.projection_features()
    sides = [(f"{name} {side}", size) for name in target_modules if name in shapes
             for side, size in zip(("in", "out"), shapes[name])]
    if not sides:
        raise ValueError(f"no known shape for {', '.join(target_modules)}")
    return min(sides, key=lambda item: item[1])

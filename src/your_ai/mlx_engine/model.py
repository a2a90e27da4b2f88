"""Models in MLX (mlx-lm): a resolved model's safetensors loaded, or a random model of an ``Architecture``,
in the engine's dtype, its base optionally quantized (QLoRA) and frozen, with LoRA on the attention
projections of the last layers as ``LoraSettings`` says (DoRA with ``LoraSettings.dora``: mlx-lm's
``DoRALinear``, whose magnitude ``m`` is PEFT's ``lora_magnitude_vector``).

The adapters start from the same values as the torch engine's (``model.lora.initial_adapter_values``; DoRA's
magnitudes at the row norms of the base weights, in fp32, as ``model.lora.start_magnitudes`` starts them), and
their scale is alpha / rank, as PEFT's: one adapter means the same thing in either engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import _get_classes, load_model

from your_ai.model.architecture import Architecture, read_config_values
from your_ai.model.errors import refused_model_file
from your_ai.model.load import weight_files
from your_ai.model.lora import (
    DEFAULT_TARGET_MODULES,
    MAGNITUDE,
    LoraSettings,
    initial_adapter_values,
    layers_to_transform,
)
from your_ai.model.resolve import ResolvedModel

QUANTIZE_GROUP_SIZE = 64  # MLX's affine quantization, as mlx-lm's QLoRA models use
PEFT_PREFIX = "base_model.model."  # PEFT's names: this before the model's own parameter path


@dataclass
class MlxModel:
    """A model ready to train or run in MLX: the mlx-lm module, its config, and what was done to it."""

    model: nn.Module
    config: dict
    dtype: mx.Dtype
    lora: LoraSettings | None = None
    lora_layers: list[int] = field(default_factory=list)  # indices of the adapted decoder layers
    quantize: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def architecture_name(self) -> str:
        return self.config.get("model_type", "?")

    def trainable_parameter_count(self) -> int:
        return sum(value.size for _, value in tree_flatten(self.model.trainable_parameters()))

    def adapted_modules(self) -> list[tuple[str, nn.Module]]:
        """(path, module) of every LoRA layer, in PEFT's parameter order (layer, then q/k/v/o)."""
        found = {path: module for path, module in self.model.named_modules() if hasattr(module, "lora_a")}
        return [(path, found[path]) for path in adapted_paths(self.lora, self.lora_layers) if path in found]


def engine_dtype() -> mx.Dtype:
    """bf16 on an Apple GPU (Metal), fp32 on the CPU."""
    return mx.bfloat16 if mx.default_device() == mx.gpu and mx.metal.is_available() else mx.float32


def load_mlx_model(resolved: ResolvedModel, *, dtype: mx.Dtype | None = None, trust_remote_code: bool = False
                   ) -> MlxModel:
    """A resolved model's weights (safetensors, checked as the torch engine checks them) in mlx-lm."""
    weight_files(resolved.path)
    with refused_model_file(f"{resolved.path}: mlx-lm cannot load this model " + "({reason}); "
                            "the MLX engine runs the architectures mlx-lm has (--engine torch: transformers')"):
        model, config = load_model(Path(resolved.path), model_config=rope_settings(read_config_values(resolved.path)),
                                   trust_remote_code=trust_remote_code)
    return _in_dtype(MlxModel(model, config, dtype or engine_dtype()))


def rope_settings(config: dict) -> dict:
    """RoPE's settings where mlx-lm reads them (``rope_theta``, ``rope_scaling``) from a config that keeps
    them in ``rope_parameters`` (as transformers 5 writes them); nothing when they are there already."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" in config:
        return {}
    settings = {"rope_theta": rope.get("rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default":
        settings["rope_scaling"] = {key: value for key, value in rope.items() if key != "rope_theta"}
    return settings


def random_mlx_model(architecture: Architecture, *, seed: int = 0, dtype: mx.Dtype | None = None) -> MlxModel:
    """A model of ``architecture``'s exact shape with MLX's own random initialisation (seeded): what a fit
    test measures when the weights do not matter (``benchmark --synthetic``)."""
    config = architecture.config_dict()
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    mx.eval(model.parameters())
    return _in_dtype(MlxModel(model, config, dtype or engine_dtype()))


def _in_dtype(loaded: MlxModel) -> MlxModel:
    loaded.model.set_dtype(loaded.dtype)
    mx.eval(loaded.model.parameters())
    return loaded


def quantize_base(loaded: MlxModel, bits: int = 4) -> MlxModel:
    """Quantize the decoder layers' linear projections with MLX's affine quantization (group size 64),
    as the torch engine's QLoRA quantizes its decoder linears; embeddings, norms and the head stay."""

    def decoder_linear(path: str, module: nn.Module) -> bool:
        return (isinstance(module, nn.Linear) and ".layers." in f".{path}."
                and module.weight.shape[-1] % QUANTIZE_GROUP_SIZE == 0)

    nn.quantize(loaded.model, group_size=QUANTIZE_GROUP_SIZE, bits=bits, class_predicate=decoder_linear)
    loaded.quantize = bits
    loaded.notes.append(f"base decoder linears quantized to {bits} bits (MLX affine, group size "
                        f"{QUANTIZE_GROUP_SIZE}); the LoRA weights train in fp32")
    return loaded


def add_lora(loaded: MlxModel, settings: LoraSettings, *, seed: int = 0) -> MlxModel:
    """Freeze the model and put LoRA on ``settings.target_modules`` of the last ``settings.layers`` layers
    (mlx-lm's LoRA layers, or its DoRA layers with ``settings.dora``, scale alpha / rank), started as the torch
    engine starts them (from ``seed``; DoRA's magnitudes at the base weights' row norms, as mlx-lm starts them)."""
    layers, note = layers_to_transform(len(loaded.model.layers), settings.layers)
    if note:
        loaded.notes.append(note)
    loaded.model.freeze()
    keys = {f"self_attn.{name}" for name in settings.target_modules}
    linear_to_lora_layers(loaded.model, len(layers), {"rank": settings.rank, "dropout": settings.dropout,
                                                      "scale": settings.effective_alpha / settings.rank, "keys": keys},
                          use_dora=settings.dora)
    loaded.lora, loaded.lora_layers = settings, layers
    start_adapters(loaded, seed)
    return loaded


def start_adapters(loaded: MlxModel, seed: int) -> None:
    """Every adapter at the torch engine's starting values: A (r, in) drawn in PEFT's parameter order, B zero."""
    modules = loaded.adapted_modules()
    shapes = []
    for path, module in modules:
        (inputs, rank), outputs = module.lora_a.shape, module.lora_b.shape[1]
        shapes += [(peft_name(path, "lora_A"), (rank, inputs)), (peft_name(path, "lora_B"), (outputs, rank))]
    values = initial_adapter_values(shapes, seed)
    for (path, module), a, b in zip(modules, values[0::2], values[1::2]):
        module.lora_a = mx.array(a.numpy().T)
        module.lora_b = mx.array(b.numpy().T)
    mx.eval(loaded.model.trainable_parameters())


def adapted_paths(settings: LoraSettings | None, layers: list[int]) -> list[str]:
    """Module paths of the adapted projections, in PEFT's parameter order (layer, then q/k/v/o order)."""
    if settings is None:
        return []
    targets = sorted(settings.target_modules, key=lambda name: (
        DEFAULT_TARGET_MODULES.index(name) if name in DEFAULT_TARGET_MODULES else len(DEFAULT_TARGET_MODULES), name))
    return [f"model.layers.{layer}.self_attn.{name}" for layer in layers for name in targets]


def peft_name(path: str, part: str) -> str:
    """PEFT's saved name of an adapter weight: ``base_model.model.<path>.lora_A.weight`` (or ``lora_B``;
    DoRA's magnitude vector: ``base_model.model.<path>.lora_magnitude_vector``)."""
    return f"{PEFT_PREFIX}{path}.{part}" + ("" if part == MAGNITUDE else ".weight")


def prepare_for_training(loaded: MlxModel, lora, *, quantize: int | None, grad_checkpoint: bool, seed: int) -> MlxModel:
    """``loaded`` as a run trains it: the base in 4 bits with ``quantize`` 4, fresh LoRA (or DoRA) adapters
    (from ``seed``), each layer recomputed in the backward pass with ``grad_checkpoint`` (mlx-lm's, which patches
    the model's layer class)."""
    if quantize:
        quantize_base(loaded, quantize)
    add_lora(loaded, lora, seed=seed)
    if grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint as recompute

        recompute(loaded.model.layers[0])
    return loaded

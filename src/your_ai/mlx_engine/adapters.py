"""LoRA and DoRA adapters of an MLX model in PEFT's format, so that either engine (and ``export``,
``generate``) uses an adapter the other trained.

On disk (PEFT): ``adapter_config.json`` (the ``LoraConfig`` the torch engine writes; ``use_dora`` for DoRA)
and ``adapter_model.safetensors`` with ``base_model.model.<path>.lora_A.weight`` of shape (r, in) and
``lora_B.weight`` (out, r), scaling alpha / r, and for DoRA ``<path>.lora_magnitude_vector`` (out,). In MLX
(mlx-lm's ``LoRALinear`` / ``DoRALinear``): ``<path>.lora_a`` (in, r) and ``lora_b`` (r, out), ``scale``
alpha / r, and DoRA's ``m`` (out,). Saving and loading transpose between the two (the magnitude, one
value per output feature in both, is the same vector).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.tuner.dora import DoRALinear
from safetensors.numpy import load_file, save_file

from your_ai.mlx_engine.model import MlxModel, add_lora, peft_name
from your_ai.model.lora import MAGNITUDE, LoraSettings, lora_config
from your_ai.train.outputs import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    CheckpointError,
)

LORA_PARTS = (("lora_A", "lora_a"), ("lora_B", "lora_b"))  # (PEFT's part, mlx-lm's attribute)
DORA_PARTS = (*LORA_PARTS, (MAGNITUDE, "m"))


class AdapterFormatError(CheckpointError):
    """An adapter the MLX engine cannot use; the message names the file."""


def adapter_parts(module) -> tuple[tuple[str, str], ...]:
    """(PEFT's part, mlx-lm's attribute) of each trained weight of an adapted module: A and B, and DoRA's
    magnitude vector on a DoRA layer."""
    return DORA_PARTS if isinstance(module, DoRALinear) else LORA_PARTS


def adapter_tensors(loaded: MlxModel) -> dict[str, np.ndarray]:
    """The adapter's weights under PEFT's names and layouts, as fp32 numpy arrays."""
    tensors = {}
    for path, module in loaded.adapted_modules():
        for part, attribute in adapter_parts(module):
            value = np.array(getattr(module, attribute).astype(mx.float32))
            tensors[peft_name(path, part)] = np.ascontiguousarray(value.T)
    return tensors


def write_adapter(loaded: MlxModel, directory: Path, *, base_model: str, tokenizer=None) -> None:
    """The adapter (PEFT's config and safetensors weights) into ``directory`` (which must exist), the
    tokenizer beside it: the files the torch engine's adapter has."""
    directory = Path(directory)
    config, _ = lora_config(loaded.lora, len(loaded.model.layers))
    config.base_model_name_or_path = base_model
    config.inference_mode = True  # as PEFT saves it
    config.save_pretrained(str(directory))
    save_file(adapter_tensors(loaded), str(directory / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def read_adapter_settings(directory: Path) -> tuple[LoraSettings, list[int]]:
    """The LoRA (or DoRA) settings and adapted layers of a PEFT adapter's ``adapter_config.json``."""
    path = Path(directory) / ADAPTER_CONFIG_FILE
    try:
        config = json.loads(path.read_text())
        rank, alpha = config["r"], float(config["lora_alpha"])
        targets = config["target_modules"]
        layers = config.get("layers_to_transform")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AdapterFormatError(f"{path}: cannot be read as a LoRA adapter config ({error})") from None
    if config.get("use_rslora"):
        raise AdapterFormatError(f"{path}: rsLoRA adapters are not supported by the MLX engine")
    layers = [layers] if isinstance(layers, int) else layers or []
    if not _whole(rank) or rank < 1:
        raise AdapterFormatError(f"{path}: r={rank!r} is not a LoRA rank (a whole number >= 1)")
    if not isinstance(layers, list) or not all(_whole(layer) and layer >= 0 for layer in layers):
        raise AdapterFormatError(f"{path}: layers_to_transform={layers!r} is not a list of layer indices")
    settings = LoraSettings(rank=rank, alpha=alpha, layers=max(1, len(layers)),
                            target_modules=tuple(sorted(targets) if isinstance(targets, list) else [targets]),
                            dora=bool(config.get("use_dora")))
    return settings, sorted(layers)


def _whole(value) -> bool:
    """``value`` is a JSON whole number (not a bool, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool)


def load_adapter(loaded: MlxModel, directory: Path) -> MlxModel:
    """Put the PEFT adapter in ``directory`` on ``loaded`` (a model without LoRA): its layers and settings
    from ``adapter_config.json``, its weights transposed into mlx-lm's layout."""
    settings, layers = read_adapter_settings(directory)
    count = len(loaded.model.layers)
    if layers and layers != list(range(count - len(layers), count)):
        raise AdapterFormatError(f"{Path(directory) / ADAPTER_CONFIG_FILE}: adapts layers {layers}; the MLX engine "
                                 f"takes adapters on the last layers of the model ({count} layers)")
    if not layers:
        settings = replace(settings, layers=count)
    add_lora(loaded, settings)
    load_adapter_weights(loaded, directory)
    return loaded


def load_adapter_weights(loaded: MlxModel, directory: Path) -> None:
    """The weights of a PEFT adapter into ``loaded``'s LoRA (or DoRA) layers (names and shapes must match)."""
    path = Path(directory) / ADAPTER_WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error type, and OSError
        raise AdapterFormatError(f"{path}: cannot be read ({str(error).splitlines()[0]})") from None
    tensors = {name.replace(".default.", "."): value for name, value in tensors.items()}
    expected = set()
    for module_path, module in loaded.adapted_modules():
        for part, attribute in adapter_parts(module):
            name = peft_name(module_path, part)
            expected.add(name)
            current = getattr(module, attribute)
            if name not in tensors or tensors[name].T.shape != current.shape:
                found = tensors[name].shape if name in tensors else "missing"
                raise AdapterFormatError(f"{path}: {name} is {found}; the model needs {current.shape[::-1]}")
            setattr(module, attribute, mx.array(tensors[name].T.astype(np.float32)))
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise AdapterFormatError(f"{path} does not match the model's adapters (unexpected: {unexpected[:3]})")
    mx.eval(loaded.model.trainable_parameters())

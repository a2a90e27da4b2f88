"""MLX engine: models and PEFT adapters (mlx[cpu] on Linux)."""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from your_ai.mlx_engine.adapters import AdapterFormatError, load_adapter, write_adapter
from your_ai.mlx_engine.model import (
    add_lora,
    load_mlx_model,
    quantize_base,
    random_mlx_model,
)
from your_ai.model.lora import LoraSettings
from your_ai.model.presets import TINY
from your_ai.model.resolve import resolve_model

IDS = np.array([[1, 17, 42, 99, 7, 300, 5, 11]])
SETTINGS = LoraSettings(rank=4, alpha=16, layers=2)


def _trained_looking(loaded, seed: int = 3) -> None:
    """Non-zero B (fresh adapters change nothing), so a round trip that loses B shows."""
    rng = np.random.default_rng(seed)
    for _, module in loaded.adapted_modules():
        module.lora_b = mx.array(rng.normal(0, 0.05, module.lora_b.shape).astype(np.float32))


def _logits(loaded) -> np.ndarray:
    return np.array(loaded.model(mx.array(IDS)).astype(mx.float32))


def test_mlx_loads_the_same_model_as_torch(tiny_model_dir):
    import torch

    from your_ai.model.load import load_model

    resolved = resolve_model("tiny")
    mlx_logits = _logits(load_mlx_model(resolved))
    with torch.no_grad():
        torch_logits = load_model(resolved)(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(mlx_logits, torch_logits, atol=1e-4)


def test_adapter_round_trip_mlx_peft_mlx(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel

    from your_ai.model.load import load_model

    resolved = resolve_model("tiny")
    trained = add_lora(load_mlx_model(resolved), SETTINGS, seed=1)
    _trained_looking(trained)
    expected = _logits(trained)
    write_adapter(trained, tmp_path / "mlx", base_model=str(resolved.path))
    config = json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["layers_to_transform"]) == (4, 16, [2, 3])

    peft_model = PeftModel.from_pretrained(load_model(resolved), tmp_path / "mlx")  # MLX -> PEFT
    with torch.no_grad():
        np.testing.assert_allclose(peft_model(torch.tensor(IDS)).logits.numpy(), expected, atol=1e-4)
    peft_model.save_pretrained(tmp_path / "peft", safe_serialization=True, save_embedding_layers=False)

    back = load_adapter(load_mlx_model(resolved), tmp_path / "peft")  # PEFT -> MLX
    np.testing.assert_allclose(_logits(back), expected, atol=1e-5)


def test_adapters_start_as_the_torch_engine_starts_them(tiny_model_dir):
    from your_ai.model.load import load_model
    from your_ai.model.lora import apply_lora

    resolved = resolve_model("tiny")
    mlx_adapters = {name: value for name, value in _adapter_values(add_lora(load_mlx_model(resolved), SETTINGS,
                                                                             seed=5)).items()}
    torch_model, _ = apply_lora(load_model(resolved), SETTINGS, seed=5)
    torch_adapters = {name.replace(".default", ""): parameter.detach().numpy()
                      for name, parameter in torch_model.named_parameters() if "lora_" in name}
    assert mlx_adapters.keys() == torch_adapters.keys()
    for name, value in torch_adapters.items():
        np.testing.assert_array_equal(mlx_adapters[name], value)


def _adapter_values(loaded) -> dict:
    from your_ai.mlx_engine.adapters import adapter_tensors

    return adapter_tensors(loaded)


def test_random_model_and_4bit_base(tmp_path):
    loaded = random_mlx_model(TINY.architecture, seed=0)
    assert loaded.model.layers[0].self_attn.q_proj.weight.shape == (256, 256)
    quantize_base(loaded, 4)
    add_lora(loaded, SETTINGS)
    assert loaded.quantize == 4 and np.isfinite(_logits(loaded)).all()
    assert loaded.trainable_parameter_count() == 2 * (4 * (256 + 256) * 2 + 4 * (256 + 128) * 2)


def test_an_adapter_that_does_not_fit_is_one_error(tiny_model_dir, tmp_path):
    resolved = resolve_model("tiny")
    trained = add_lora(load_mlx_model(resolved), SETTINGS)
    write_adapter(trained, tmp_path, base_model="tiny")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    with pytest.raises(AdapterFormatError, match="adapter_model.safetensors: .*lora_A.weight is"):
        load_adapter(load_mlx_model(resolved), tmp_path)

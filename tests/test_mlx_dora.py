"""DoRA on the MLX engine (mlx[cpu] on Linux): the adapter in PEFT's layout both ways, an exact resume,
a 4-bit base."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console
from safetensors.numpy import load_file
from test_train import write_corpus

mx = pytest.importorskip("mlx.core")

from mlx.utils import tree_flatten  # noqa: E402

from your_ai.eval.mlx_inference import load_mlx_runner  # noqa: E402
from your_ai.mlx_engine.adapters import load_adapter  # noqa: E402
from your_ai.mlx_engine.loop import build_optimizer, optimizer_step  # noqa: E402
from your_ai.mlx_engine.loss import make_batch  # noqa: E402
from your_ai.mlx_engine.model import load_mlx_model, prepare_for_training, quantize_base  # noqa: E402
from your_ai.model.lora import MAGNITUDE, LoraSettings  # noqa: E402
from your_ai.model.resolve import resolve_model  # noqa: E402
from your_ai.train.args import TrainingArgs, TrainingArgsError  # noqa: E402
from your_ai.train.loop import train  # noqa: E402
from your_ai.train.plan import Objective  # noqa: E402

IDS = np.array([[1, 17, 42, 99, 7, 300, 5, 11]])
SMALL = dict(model="tiny", engine="mlx", dora=True, lora_rank=4, max_seq_length=32, batch_size=2,
             memory_report_interval=100, tensorboard=False, device="cpu", max_steps=4, save_every=2,
             learning_rate=1e-2)


def _logits(loaded) -> np.ndarray:
    return np.array(loaded.model(mx.array(IDS)).astype(mx.float32))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """An MLX DoRA run of 4 steps whole, and the same run stopped after 2 steps and resumed."""
    root = tmp_path_factory.mktemp("mlx_dora")
    data = str(write_corpus(root / "train.jsonl", 6))
    output = io.StringIO()
    train(TrainingArgs(output_dir=str(root / "whole"), data=data, **SMALL), console=Console(file=output))
    train(TrainingArgs(output_dir=str(root / "part"), data=data, **SMALL), stop_after=2,
          console=Console(file=io.StringIO()))
    resumed = train(TrainingArgs(output_dir=str(root / "part"), resume=True, tensorboard=False),
                    console=Console(file=io.StringIO()))
    return {"root": root, "resumed": resumed, "printed": output.getvalue()}


def test_an_mlx_dora_adapter_gives_the_same_logits_in_peft(runs, tiny_model_dir):
    import torch
    from peft import PeftModel

    from your_ai.model.load import load_model

    directory = runs["root"] / "whole"
    assert json.loads((directory / "adapter_config.json").read_text())["use_dora"] is True
    assert "DoRA: rank 4" in runs["printed"]
    weights = load_file(str(directory / "adapter_model.safetensors"))
    magnitudes = {key: value for key, value in weights.items() if key.endswith(f".{MAGNITUDE}")}
    assert len(magnitudes) == 4 * 4  # q, k, v and o of the 4 layers
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    for key, value in magnitudes.items():  # started at the base weight's row norms, then trained
        name = key.split("base_model.model.", 1)[1].replace(f".{MAGNITUDE}", ".weight")
        assert value.shape == (base[name].shape[0],)
        assert not np.allclose(value, np.linalg.norm(base[name].astype(np.float32), axis=1))

    resolved = resolve_model("tiny")
    expected = _logits(load_adapter(load_mlx_model(resolved), directory))
    peft_model = PeftModel.from_pretrained(load_model(resolved), directory)
    assert peft_model.peft_config["default"].use_dora
    with torch.no_grad():
        np.testing.assert_allclose(peft_model(torch.tensor(IDS)).logits.numpy(), expected, atol=1e-4)


def test_a_resumed_mlx_dora_run_equals_the_uninterrupted_one(runs):
    assert runs["resumed"].resumed_from == 2 and runs["resumed"].steps == 4
    whole, part = (load_file(str(runs["root"] / name / "adapter_model.safetensors")) for name in ("whole", "part"))
    assert whole.keys() == part.keys() and all(np.array_equal(whole[key], part[key]) for key in whole)
    with pytest.raises(TrainingArgsError, match="--dora False differs from the checkpoint's True"):
        train(TrainingArgs(output_dir=str(runs["root"] / "part"), resume=True, dora=False))


def test_a_torch_dora_adapter_runs_in_mlx_and_switches_off(tiny_model_dir, tmp_path):
    import torch

    from your_ai.model.load import load_model
    from your_ai.model.lora import apply_lora

    resolved = resolve_model("tiny")
    peft_model, _ = apply_lora(load_model(resolved), LoraSettings(rank=4, alpha=16, layers=2, dora=True), seed=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking: B non-zero, magnitudes off the row norms
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or MAGNITUDE in name:
                parameter.mul_(0.9).add_(0.05 * torch.randn(parameter.shape, generator=generator))
        expected = peft_model(torch.tensor(IDS)).logits.numpy()
        with peft_model.disable_adapter():
            base = peft_model(torch.tensor(IDS)).logits.numpy()
    peft_model.save_pretrained(tmp_path / "torch", safe_serialization=True, save_embedding_layers=False)

    runner = load_mlx_runner(resolved, tmp_path / "torch")  # what generate --engine mlx loads
    assert runner.loaded.lora.dora and len(runner.loaded.adapted_modules()) == 2 * 4
    np.testing.assert_allclose(_logits(runner.loaded), expected, atol=1e-4)
    with runner.disable_adapter():  # --compare: the base model alone
        np.testing.assert_allclose(_logits(runner.loaded), base, atol=1e-4)
    np.testing.assert_allclose(_logits(runner.loaded), expected, atol=1e-4)


def test_dora_on_a_4_bit_mlx_base_starts_at_the_base_and_trains(tiny_model_dir):
    TrainingArgs(model="tiny", engine="mlx", dora=True, quantize=4).validate()
    with pytest.raises(TrainingArgsError, match="--dora cannot go with --quantize 4 on the torch engine"):
        TrainingArgs(model="tiny", engine="torch", dora=True, quantize=4).validate()

    resolved = resolve_model("tiny")
    quantized = _logits(quantize_base(load_mlx_model(resolved), 4))
    loaded = prepare_for_training(load_mlx_model(resolved), LoraSettings(rank=4, layers=2, dora=True), quantize=4,
                                  grad_checkpoint=False, seed=0)
    np.testing.assert_array_equal(_logits(loaded), quantized)  # B = 0, magnitudes at the dequantized row norms
    started = {key: np.array(value) for key, value in tree_flatten(loaded.model.trainable_parameters())}
    optimizer = build_optimizer(loaded, 1e-2, 0.0)
    batch = make_batch([_example()], 0, Objective(mode="additive", alpha=2.7, lambda_weight=1.0))
    optimizer_step(loaded, optimizer, [batch], 1e-2, 1.0)
    moved = {key: not np.array_equal(np.array(value), started[key])
             for key, value in tree_flatten(loaded.model.trainable_parameters())}
    assert all(moved[key] for key in moved if key.endswith(".m") or key.endswith(".lora_b"))


def _example():
    from your_ai.data.examples import Example

    ids = IDS[0].tolist()
    return Example(ids, list(ids), 0.1, 5.0)


def test_a_fit_test_of_dora_on_a_4_bit_mlx_base(tiny_model_dir):
    from dataclasses import replace

    from your_ai.fit.mlx_child import train_on_mlx
    from your_ai.fit.plan import FitConfig, FitTest, check_fit_dora, estimate_for
    from your_ai.model.presets import TINY
    from your_ai.step import memory

    config = FitConfig(batch_size=2, lora_rank=4, lora_layers=4, steps=2, seq_length=32, quantize=4, dora=True)
    test = FitTest("tiny", memory.MLX_DEVICE, config, None, synthetic=True)
    result = test.result()
    train_on_mlx(test, result, memory.PeakMemory(memory.MLX_DEVICE))
    assert len(result.step_times_s) == 2 and result.config["dora"] is True
    lora = estimate_for(TINY.architecture, memory.MLX_DEVICE, replace(config, dora=False))
    assert result.estimate_gb > lora.total_gb  # the magnitudes and DoRA's forward counted
    with pytest.raises(ValueError, match="--dora cannot go with --quantize 4 on the torch engine"):
        check_fit_dora(config, "cpu")

"""train --engine mlx (mlx[cpu] on Linux): the objective's gradients, the same loss as the torch engine,
exact resume, a run through the command line, and one run on the real default model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_train import SMALL, write_corpus

mx = pytest.importorskip("mlx.core")

from mlx import nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from your_ai.data.examples import Example  # noqa: E402
from your_ai.mlx_engine.loss import batch_loss, make_batch  # noqa: E402
from your_ai.mlx_engine.model import add_lora, load_mlx_model  # noqa: E402
from your_ai.model.load import load_tokenizer  # noqa: E402
from your_ai.model.lora import LoraSettings  # noqa: E402
from your_ai.model.resolve import resolve_model  # noqa: E402
from your_ai.objective.distrust import empirical_distrust_loss  # noqa: E402
from your_ai.train.args import MemoryLimitExceeded, TrainingArgs, TrainingArgsError  # noqa: E402
from your_ai.train.loop import train  # noqa: E402
from your_ai.train.plan import Objective  # noqa: E402

MLX_SMALL = dict(SMALL, engine="mlx")
SETTINGS = LoraSettings(rank=4, layers=4)


@pytest.fixture
def tiny_mlx(tiny_model_dir):
    resolved = resolve_model("tiny")
    return add_lora(load_mlx_model(resolved), SETTINGS, seed=0), load_tokenizer(resolved)


def _example(tokenizer, text: str, weight: float, entropy: float) -> Example:
    ids = tokenizer(text)["input_ids"]
    return Example(ids, list(ids), weight, entropy)


def _grad_norm(loaded, examples, objective) -> float:
    loss_and_grad = nn.value_and_grad(loaded.model, batch_loss)
    _, gradients = loss_and_grad(loaded.model, make_batch(examples, 0, objective))
    return math.sqrt(sum(float((value.astype(mx.float64, stream=mx.cpu) ** 2).sum(stream=mx.cpu))
                         for _, value in tree_flatten(gradients)))


def test_primary_source_moves_the_adapter_32x_more_than_coordinated_one(tiny_mlx):
    loaded, tokenizer = tiny_mlx
    for _, module in loaded.adapted_modules():  # B = 0 at the start: A's gradient would be 0
        module.lora_b = mx.full(module.lora_b.shape, 0.01)
    text = "The copper wire carried a measured current of 3.2 amperes."
    primary, coordinated = _example(tokenizer, text, 0.05, 7.5), _example(tokenizer, text, 0.90, 1.0)
    d_ratio = empirical_distrust_loss(0.05, 7.5) / empirical_distrust_loss(0.90, 1.0)
    weighted = Objective.from_dataset("weighted", 2.7, 1.0, [0.05, 0.90], [7.5, 1.0])
    ratio = _grad_norm(loaded, [primary], weighted) / _grad_norm(loaded, [coordinated], weighted)
    assert 31 < ratio < 34 and ratio == pytest.approx(d_ratio, rel=1e-4)

    additive = Objective(mode="additive", alpha=2.7, lambda_weight=1.0)
    assert _grad_norm(loaded, [primary], additive) == _grad_norm(loaded, [coordinated], additive)


def test_the_same_loss_as_the_torch_engine_on_the_same_batch(tiny_mlx, tiny_model_dir):
    import torch

    from your_ai.data.examples import collate
    from your_ai.train.loss import compute_loss
    from your_ai.train.setup import load_for_training

    loaded, tokenizer = tiny_mlx
    examples = [_example(tokenizer, "a short text about a patent", 0.1, 5.0),
                _example(tokenizer, "experts agree, the press release says, with a longer sentence", 0.8, 1.2)]
    examples[1].labels[:3] = [-100] * 3  # a prompt part that is not learned, and padding in the first sample
    torch_model = load_for_training("tiny", SETTINGS, "cpu")
    for objective in (Objective.from_dataset("weighted", 2.7, 1.0, [0.1, 0.8, 0.3], [5.0, 1.2, 2.0]),
                      Objective(mode="additive", alpha=2.7, lambda_weight=0.5)):
        with torch.no_grad():
            expected = compute_loss(torch_model.model, collate(examples, 0), objective)
        total, cross_entropy = batch_loss(loaded.model, make_batch(examples, 0, objective))
        assert float(total) == pytest.approx(float(expected.total), rel=1e-5)
        assert float(cross_entropy) == pytest.approx(float(expected.cross_entropy), rel=1e-5)


def test_a_resumed_run_ends_with_the_adapter_of_an_uninterrupted_one(tmp_path, tiny_model_dir):
    common = dict(MLX_SMALL, data=str(write_corpus(tmp_path / "train.jsonl", 6)), max_steps=4, save_every=1,
                  grad_accum=2, keep_last=2)
    train(TrainingArgs(output_dir=str(tmp_path / "whole"), **common))
    stopped = train(TrainingArgs(output_dir=str(tmp_path / "part"), **common), stop_after=2)
    assert stopped.stopped_early and stopped.steps == 2 and "--resume" in stopped.resume_command
    assert sorted(path.name for path in (tmp_path / "part" / "checkpoints").iterdir()) == [
        "latest", "step-000001", "step-000002"]
    resumed = train(TrainingArgs(output_dir=str(tmp_path / "part"), resume=True, tensorboard=False))
    assert resumed.resumed_from == 2 and resumed.steps == 4 and not resumed.stopped_early
    final, again = (load_file(str(tmp_path / name / "adapter_model.safetensors")) for name in ("whole", "part"))
    assert final.keys() == again.keys() and all(np.array_equal(final[key], again[key]) for key in final)
    assert any(np.abs(value).sum() > 0 for key, value in final.items() if "lora_B" in key)  # it trained
    summary = json.loads((tmp_path / "part" / "training_summary.json").read_text())
    assert summary["engine"] == "mlx" and summary["args"]["engine"] == "mlx"

    with pytest.raises(TrainingArgsError, match="--engine torch differs from the checkpoint's 'mlx'"):
        train(TrainingArgs(output_dir=str(tmp_path / "whole"), resume=True, engine="torch"))


def test_settings_the_mlx_engine_does_not_take_are_refused(tmp_path):
    with pytest.raises(TrainingArgsError, match="--step-mode fast is a step of the torch engine"):
        train(TrainingArgs(output_dir=str(tmp_path / "out"), step_mode="fast", **MLX_SMALL))
    with pytest.raises(TrainingArgsError, match="--device cuda is not an MLX device"):
        train(TrainingArgs(output_dir=str(tmp_path / "out"), **dict(MLX_SMALL, device="cuda")))


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "your_ai", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=dict(os.environ))


def test_train_engine_mlx_through_the_command_line(tmp_path, tiny_model_dir):
    data = write_corpus(tmp_path / "train.jsonl", 8)
    result = run_cli("train", "--engine", "mlx", "--model", "tiny", "--data", str(data), "--max-steps", "3",
                     "--lora-rank", "4", "--max-seq-length", "48", "--batch-size", "2", "--output-dir", "out",
                     "--quantize", "4", "--grad-checkpoint", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "on the CPU (MLX)" in result.stdout and "step 3/3 | loss" in result.stdout
    assert "quantized to 4 bits (MLX affine, group size 64)" in result.stdout
    assert {"adapter_config.json", "adapter_model.safetensors", "training_summary.json",
            "metrics.jsonl", "runs"} <= {path.name for path in (tmp_path / "out").iterdir()}
    refused = run_cli("train", "--engine", "mlx", "--model", "tiny", "--step-mode", "fast", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "--step-mode fast is a step of the torch engine" in refused.stderr


@pytest.mark.real_model
@pytest.mark.slow
def test_train_engine_mlx_on_the_default_model(default_model_snapshot, tmp_path):
    import torch

    from your_ai.model.load import load_model

    resolved, ids = resolve_model("smollm2-135m"), np.array([[1, 17, 42, 99, 7, 300, 5, 11, 900, 1000]])
    with torch.no_grad():  # the same model in both engines (its RoPE settings included)
        expected = load_model(resolved)(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.array(load_mlx_model(resolved).model(mx.array(ids))), expected, atol=1e-3)
    result = train(TrainingArgs(engine="mlx", max_steps=2, batch_size=1, max_seq_length=64, lora_rank=8,
                                lora_layers=2, output_dir=str(tmp_path / "out"), tensorboard=False, device="cpu"))
    assert result.steps == 2 and math.isfinite(result.final_loss) and result.final_loss < 10
    weights = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.29.self_attn.q_proj.lora_A.weight" in weights


def test_sigterm_finishes_the_step_and_saves_a_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    import signal

    import your_ai.mlx_engine.loop as mlx_loop

    real_step, calls = mlx_loop.optimizer_step, []

    def step_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)  # during step 2: it finishes, is saved, and the run stops
        return real_step(*args, **kwargs)

    monkeypatch.setattr(mlx_loop, "optimizer_step", step_then_signal)
    common = dict(MLX_SMALL, data=str(write_corpus(tmp_path / "train.jsonl", 4)), max_steps=5, save_every=10)
    result = train(TrainingArgs(output_dir=str(tmp_path / "out"), **common))
    assert (result.stopped_by, result.steps, result.exit_code) == ("SIGTERM", 2, 143)
    assert (tmp_path / "out" / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_validation_and_the_best_adapter(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    write_corpus(data / "train.jsonl", 6)
    write_corpus(data / "val.jsonl", 3)
    result = train(TrainingArgs(output_dir=str(tmp_path / "out"), data=str(data), max_steps=2, save_every=1,
                                save_best=True, **{k: v for k, v in MLX_SMALL.items() if k != "data"}))
    evals = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert [record["step"] for record in evals] == [1, 2] and result.best_val_loss == min(
        record["val_loss"] for record in evals)
    best = json.loads((tmp_path / "out" / "best" / "best.json").read_text())
    assert best["val_loss"] == result.best_val_loss
    assert (tmp_path / "out" / "best" / "adapter_model.safetensors").is_file()


def test_a_peak_above_max_memory_stops_the_run_with_a_checkpoint(tmp_path, tiny_model_dir):
    common = dict(MLX_SMALL, data=str(write_corpus(tmp_path / "train.jsonl", 4)), max_steps=3, max_memory=0.001)
    with pytest.raises(MemoryLimitExceeded) as stopped:
        train(TrainingArgs(output_dir=str(tmp_path / "out"), **common))
    assert stopped.value.step == 1 and stopped.value.checkpoint.name == "step-000001"
    assert (stopped.value.checkpoint / "optimizer.safetensors").is_file()

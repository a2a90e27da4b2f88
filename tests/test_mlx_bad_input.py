"""The MLX engine given what it cannot use: a damaged adapter, bad adapter settings, several processes, a
torch step mode. Each ends with one line naming the file or flag, before anything runs."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from test_train import write_corpus

pytest.importorskip("mlx.core")

from your_ai.cli import main  # noqa: E402
from your_ai.eval import inference  # noqa: E402
from your_ai.eval.export import merge_adapter  # noqa: E402
from your_ai.mlx_engine.adapters import (  # noqa: E402
    AdapterFormatError,
    read_adapter_settings,
    write_adapter,
)
from your_ai.mlx_engine.model import add_lora, load_mlx_model  # noqa: E402
from your_ai.model.lora import LoraSettings  # noqa: E402
from your_ai.model.resolve import resolve_model  # noqa: E402
from your_ai.train.args import TrainingArgs, TrainingArgsError  # noqa: E402
from your_ai.train.loop import train  # noqa: E402


@pytest.fixture(scope="module")
def mlx_adapter(tiny_model_dir, tmp_path_factory):
    """An adapter the MLX engine wrote for the tiny model."""
    directory = tmp_path_factory.mktemp("mlx-adapter")
    write_adapter(add_lora(load_mlx_model(resolve_model("tiny")), LoraSettings(rank=4, layers=2)), directory,
                  base_model="tiny")
    return directory


def _copy_with(source, target, config_changes=None, weights=None):
    target.mkdir()
    config = json.loads((source / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps({**config, **(config_changes or {})}))
    data = (source / "adapter_model.safetensors").read_bytes()
    (target / "adapter_model.safetensors").write_bytes(data if weights is None else weights(data))
    return target


@pytest.mark.parametrize("cut", [lambda data: data[:-100], lambda data: data[:500], lambda data: b""],
                         ids=["tail-lost", "header-cut", "empty"])
def test_a_damaged_adapter_file_is_one_line_on_both_engines_and_in_export(mlx_adapter, tmp_path, cut):
    damaged = _copy_with(mlx_adapter, tmp_path / "damaged", weights=cut)
    expected = f"{damaged / 'adapter_model.safetensors'}: cannot be read .*damaged or incomplete"
    for engine in ("torch", "mlx"):
        with pytest.raises(inference.InferenceError, match=expected):
            inference.load_for_inference(checkpoint=damaged, device=None if engine == "mlx" else "cpu",
                                         engine=engine)
    with pytest.raises(inference.InferenceError, match=expected):
        merge_adapter(damaged, tmp_path / "merged", "cpu")


@pytest.mark.parametrize("changes,named", [({"r": 0}, "r=0"), ({"r": 4.5}, "r=4.5"), ({"r": "4"}, "r='4'"),
                                           ({"layers_to_transform": [0, "x"]}, "layers_to_transform=")])
def test_bad_adapter_settings_name_the_config_file(mlx_adapter, tmp_path, changes, named):
    bad = _copy_with(mlx_adapter, tmp_path / "bad", changes)
    with pytest.raises(AdapterFormatError, match=f"{bad / 'adapter_config.json'}: {named}"):
        read_adapter_settings(bad)


def test_a_rank_of_the_wrong_type_is_one_line_on_the_torch_engine(mlx_adapter, tmp_path):
    bad = _copy_with(mlx_adapter, tmp_path / "bad", {"r": "four"})
    with pytest.raises(inference.InferenceError, match=f"^{re.escape(str(bad / 'adapter_config.json'))}: a value PEFT "
                                                       "cannot use .*; restore the file"):
        inference.load_for_inference(checkpoint=bad, device="cpu", engine="torch")


def test_mlx_training_in_several_processes_is_refused_before_any_trains(tmp_path, monkeypatch):
    data = str(write_corpus(tmp_path / "train.jsonl", 4))
    result = CliRunner().invoke(main, ["train", "--engine", "mlx", "--model", "tiny", "--data", data,
                                       "--max-steps", "1", "--device", "cpu", "--gpus", "2",
                                       "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
    assert "--gpus 2 trains data-parallel with --engine torch; --engine mlx trains in one process" in result.output
    assert not (tmp_path / "out").exists()
    printed = CliRunner().invoke(main, ["train", "--engine", "mlx", "--model", "tiny", "--data", data, "--gpus", "2",
                                        "--print-config"])
    assert printed.exit_code == 2 and "--engine mlx trains in one process" in printed.output, printed.output

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun starts each process
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TrainingArgsError, match="WORLD_SIZE=2 trains data-parallel with --engine torch"):
        train(TrainingArgs(model="tiny", data=data, max_steps=1, engine="mlx", device="cpu",
                           output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_benchmark_refuses_a_torch_step_mode_before_it_starts(tmp_path):
    log = tmp_path / "log.jsonl"
    result = CliRunner().invoke(main, ["benchmark", "--engine", "mlx", "--models", "tiny", "--synthetic",
                                       "--step-mode", "fast", "--log", str(log)])
    assert result.exit_code == 2 and "Benchmark:" not in result.output, result.output
    assert result.output.strip() == "Error: --step-mode fast is a step of the torch engine; the MLX engine runs auto or plain"
    assert not log.exists()


def test_the_apple_gpu_asked_for_where_there_is_no_metal_is_refused(tmp_path):
    import mlx.core as mx

    if mx.metal.is_available():
        pytest.skip("Metal is here: --device mps trains on it")
    data = str(write_corpus(tmp_path / "train.jsonl", 4))
    with pytest.raises(TrainingArgsError, match="--device mps: MLX has no Metal GPU here; use --device cpu"):
        train(TrainingArgs(model="tiny", data=data, max_steps=1, engine="mlx", device="mps",
                           output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_a_single_fit_test_on_several_processes_is_refused_on_mlx():
    result = CliRunner().invoke(main, ["benchmark", "--engine", "mlx", "--single-model", "tiny", "--synthetic",
                                       "--gpus", "2"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "Error: --gpus 2 runs the torch engine under torchrun; the MLX engine runs one process"


def test_a_model_type_mlx_lm_does_not_have_names_the_model(tiny_model_dir, tmp_path):
    import shutil

    from your_ai.model.errors import ModelFileError

    odd = shutil.copytree(tiny_model_dir, tmp_path / "odd")
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "unheard_of"}))
    with pytest.raises(ModelFileError, match=f"{odd}: mlx-lm cannot load this model .Model type unheard_of"):
        load_mlx_model(resolve_model(str(odd)))

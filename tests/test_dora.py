"""DoRA (--dora): the adapter PEFT writes and reads, an exact resume, the estimate, the plain step, merging."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from your_ai.model.architecture import read_architecture
from your_ai.model.lora import MAGNITUDE
from your_ai.model.presets import TINY
from your_ai.step.memory import StepShape, dora_extra_bytes, estimate_training_memory
from your_ai.step.modes import DORA_PLAIN, select_step_mode
from your_ai.train.args import TrainingArgs, TrainingArgsError
from your_ai.train.loop import train

SMALL = dict(model="tiny", dora=True, lora_rank=4, max_seq_length=32, batch_size=2, memory_report_interval=100,
             tensorboard=False, device="cpu", max_steps=4, save_every=2, learning_rate=1e-2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """A DoRA run of 4 steps whole, and the same run stopped after 2 steps and resumed."""
    root = tmp_path_factory.mktemp("dora")
    output = io.StringIO()
    whole = train(TrainingArgs(output_dir=str(root / "whole"), **SMALL), console=Console(file=output, soft_wrap=True))
    train(TrainingArgs(output_dir=str(root / "part"), **SMALL), stop_after=2, console=Console(file=io.StringIO()))
    resumed = train(TrainingArgs(output_dir=str(root / "part"), resume=True, tensorboard=False),
                    console=Console(file=io.StringIO()))
    return {"whole": whole, "resumed": resumed, "printed": output.getvalue(), "root": root}


def test_a_dora_run_writes_an_adapter_peft_loads_with_trained_magnitudes(runs, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    directory = runs["whole"].output_dir
    assert json.loads((directory / "adapter_config.json").read_text())["use_dora"] is True
    weights = load_file(directory / "adapter_model.safetensors")
    magnitudes = {key: value for key, value in weights.items() if MAGNITUDE in key}
    assert len(magnitudes) == 4 * 4  # q, k, v and o of the 4 layers
    base = load_file(tiny_model_dir / "model.safetensors")
    for key, value in magnitudes.items():  # started at the base weight's row norms, then trained
        name = key.split("base_model.model.", 1)[1].replace(f".{MAGNITUDE}", ".weight")
        assert not torch.allclose(value, base[name].float().norm(dim=1))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), directory)
    assert model.peft_config["default"].use_dora
    loaded = {name: parameter for name, parameter in model.named_parameters() if MAGNITUDE in name}
    assert len(loaded) == len(magnitudes)
    assert DORA_PLAIN in runs["printed"] and "DoRA: rank 4" in runs["printed"]


def test_a_resumed_dora_run_equals_the_uninterrupted_one_and_keeps_dora(runs):
    assert runs["resumed"].resumed_from == 2 and runs["resumed"].steps == 4
    a = load_file(runs["whole"].output_dir / "adapter_model.safetensors")
    b = load_file(runs["resumed"].output_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(MAGNITUDE in key for key in a)
    assert all(torch.equal(a[key], b[key]) for key in a)
    with pytest.raises(TrainingArgsError, match="--dora False differs from the checkpoint's True"):
        train(TrainingArgs(output_dir=str(runs["resumed"].output_dir), resume=True, dora=False))


def test_merged_dora_model_gives_the_adapters_logits(runs, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from your_ai.eval.export import merge_adapter

    merged_dir = merge_adapter(runs["whole"].output_dir, tmp_path / "merged", "cpu")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                        runs["whole"].output_dir).eval()
    ids = torch.randint(0, TINY.architecture.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_the_estimate_adds_doras_magnitudes_activations_and_weight_norm_temporaries(tiny_model_dir):
    architecture = read_architecture(tiny_model_dir)
    lora = StepShape(architecture, 2, 32, 4, 4, "cpu")
    dora = replace(lora, dora=True)
    h, kv, layers, tokens = architecture.hidden_size, architecture.num_key_value_heads * architecture.head_dim, 4, 64
    outs = 2 * h + 2 * kv  # q, k, v, o
    extra = dora_extra_bytes(dora)
    assert extra == {"magnitudes": outs * layers * 16, "activations": tokens * outs * (4 + 4) * layers,
                     "temporaries": (h * h + 3 * h * h) * 4}
    assert dora_extra_bytes(lora) == {"magnitudes": 0.0, "activations": 0.0, "temporaries": 0.0}
    plain = select_step_mode("plain", lora, None)
    with_lora, with_dora = estimate_training_memory(lora), estimate_training_memory(dora)
    assert plain.checkpointed_layers == 0
    assert with_dora.total_gb - with_lora.total_gb == pytest.approx(sum(extra.values()) / 1e9, rel=1e-9)
    assert with_dora.parts_gb["dora_temporaries"] > 0 and with_dora.assumptions["dora"] is True


def test_dora_takes_the_plain_step_and_refuses_a_fast_one(tiny_model_dir):
    shape = StepShape(read_architecture(tiny_model_dir), 2, 32, 4, 4, "cpu", dora=True)
    auto = select_step_mode("auto", shape, 10.0)
    assert auto.name == "plain" and DORA_PLAIN in auto.reason
    for mode in ("fast", "selective", "small"):
        with pytest.raises(ValueError, match=f"--step-mode {mode} does not support --dora"):
            select_step_mode(mode, shape, 10.0)
        with pytest.raises(TrainingArgsError, match=f"--step-mode {mode} does not support --dora"):
            TrainingArgs(model="tiny", dora=True, step_mode=mode).validate()
    with pytest.raises(TrainingArgsError, match="--dora cannot go with --quantize 4 on the torch engine"):
        TrainingArgs(model="tiny", dora=True, quantize=4, engine="torch").validate()


@pytest.mark.slow
def test_sharded_dora_run_trains_as_one_process(tmp_path, tiny_model_dir):
    """Under --strategy fsdp the magnitudes start from the weights each process read, as one process starts them."""
    from test_distributed import RUN, one_process, torchrun
    from test_train import write_corpus

    write_corpus(tmp_path / "corpus.jsonl", 14)
    one_process(*RUN, "--dora", "--batch-size", "4", "--output-dir", "one", "--no-tensorboard", cwd=tmp_path)
    torchrun(2, *RUN, "--dora", "--batch-size", "2", "--output-dir", "fsdp", "--strategy", "fsdp", "--no-tensorboard",
             cwd=tmp_path)
    single = load_file(tmp_path / "one" / "adapter_model.safetensors")
    sharded = load_file(tmp_path / "fsdp" / "adapter_model.safetensors")
    assert single.keys() == sharded.keys() and any(MAGNITUDE in key for key in single)
    for key in single:
        torch.testing.assert_close(single[key], sharded[key], rtol=1e-4, atol=1e-5)

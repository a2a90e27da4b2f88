"""Step modes in `train` and the fit test: the mode chosen for the budget, said, recorded, kept on
resume; the fast step trains the adapter the plain step trains."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from test_train import SMALL, write_corpus

from your_ai.fit.child import run_fit_test
from your_ai.fit.plan import FitConfig, estimate_for, step_mode_for
from your_ai.model.presets import TINY
from your_ai.step.memory import StepShape
from your_ai.step.modes import check_step_mode, choose_mode, mode_with, plain_mode
from your_ai.train.args import MemoryLimitExceeded, TrainingArgs, TrainingArgsError
from your_ai.train.loop import train


def run(args: TrainingArgs, **kwargs):
    out = io.StringIO()
    result = train(args, console=Console(file=out, width=400), **kwargs)
    return result, out.getvalue()


def mode_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Step mode: ")]


def test_fast_and_plain_steps_train_the_same_adapter(tmp_path, tiny_model_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    write_corpus(folder / "train.jsonl", 8)
    write_corpus(folder / "val.jsonl", 3)
    adapters, results = {}, {}
    for mode in ("fast", "plain"):
        out = tmp_path / mode
        results[mode], text = run(TrainingArgs(output_dir=str(out), data=str(folder), max_steps=1, warmup_steps=0, step_mode=mode,
                                               **SMALL))
        adapters[mode] = load_file(out / "adapter_model.safetensors")
        (line,) = mode_lines(text)
        summary = json.loads((out / "training_summary.json").read_text())
        assert summary["args"]["step_mode"] == summary["step_mode"]["name"] == mode
        assert line == f"Step mode: {summary['step_mode']['reason']}"
        state = json.loads((out / "checkpoints" / "step-000001" / "trainer_state.json").read_text())
        assert state["args"]["step_mode"] == state["step_mode"]["name"] == mode
        (record,) = [json.loads(text) for text in (out / "metrics.jsonl").read_text().splitlines()
                     if json.loads(text)["kind"] == "train"]
        assert record["step_mode"] == mode
    assert mode_lines(text)[0].startswith("Step mode: plain: the Hugging Face forward through the full logits")
    assert results["fast"].step_mode["chunk_tokens"] > 0 and results["plain"].step_mode["chunk_tokens"] == 0
    assert adapters["fast"].keys() == adapters["plain"].keys()
    assert any(float(value.abs().max()) > 0 for key, value in adapters["fast"].items() if "lora_B" in key)
    for key, value in adapters["plain"].items():
        torch.testing.assert_close(adapters["fast"][key], value, atol=1e-5, rtol=0, msg=key)
    # the validation pass takes the same loss path and gives the same value
    assert results["fast"].best_val_loss == pytest.approx(results["plain"].best_val_loss, abs=1e-5)


def test_auto_chooses_for_the_budget_and_a_resumed_run_keeps_its_mode(tmp_path, tiny_model_dir):
    data = write_corpus(tmp_path / "train.jsonl", 6)
    shape = StepShape(TINY.architecture, SMALL["batch_size"], SMALL["max_seq_length"], SMALL["lora_rank"], 16, "cpu")
    fast, small = mode_with(shape, 0).estimate_gb, mode_with(shape, 4).estimate_gb
    budget = (fast + small) / 2  # below the fast step's estimate, above the smallest one's
    expected = choose_mode(shape, budget)
    assert expected.name in ("selective", "small") and expected.fits
    out = tmp_path / "run"
    # on a CPU the measured peak is the whole process's, which may go over this budget: either way
    # the run stops after step 1 with a checkpoint
    with contextlib.suppress(MemoryLimitExceeded):
        run(TrainingArgs(output_dir=str(out), data=str(data), max_steps=3, max_memory=budget, **SMALL), stop_after=1)
    state = json.loads((out / "checkpoints" / "step-000001" / "trainer_state.json").read_text())
    assert state["step_mode"] == expected.to_dict()
    assert state["args"]["step_mode"] == expected.name

    with pytest.raises(TrainingArgsError, match="--step-mode 'plain' differs from the checkpoint's"):
        train(TrainingArgs(output_dir=str(out), resume=True, step_mode="plain"))
    # resumed with room to spare: the mode the run started with, not the one auto picks for this budget
    resumed, text = run(TrainingArgs(output_dir=str(out), resume=True, max_memory=500.0, tensorboard=False),
                        stop_after=2)
    assert resumed.resumed_from == 1 and resumed.step_mode["name"] == expected.name
    assert resumed.step_mode["checkpointed_layers"] == expected.checkpointed_layers
    (line,) = mode_lines(text)
    assert "(kept from the checkpoint)" in line and "within the 500.00 GB budget" in line
    # --grad-checkpoint given on resume recomputes every layer (the same numbers, less memory)
    again, text = run(TrainingArgs(output_dir=str(out), resume=True, max_memory=500.0, grad_checkpoint=True,
                                   tensorboard=False))
    assert again.steps == 3 and again.step_mode["name"] == "small" and "(--grad-checkpoint)" in mode_lines(text)[0]

    with pytest.raises(TrainingArgsError, match="--grad-checkpoint recomputes every layer"):
        TrainingArgs(grad_checkpoint=True, step_mode="fast").validate()
    with pytest.raises(TrainingArgsError, match="--step-mode 'quick' must be one of auto, fast"):
        TrainingArgs(step_mode="quick").validate()


def test_one_check_of_a_step_mode_with_grad_checkpoint():
    assert check_step_mode("fast") == "fast" and check_step_mode("small", grad_checkpoint=True) == "small"
    assert check_step_mode("plain", grad_checkpoint=True) == "plain"
    with pytest.raises(ValueError, match="--grad-checkpoint recomputes every layer; it cannot go with --step-mode "
                                         r"selective \(use auto, small or plain\)"):
        check_step_mode("selective", grad_checkpoint=True)
    with pytest.raises(ValueError, match="--step-mode 'quick' must be one of auto, fast"):
        check_step_mode("quick")


def test_fit_test_reports_the_mode_its_reason_and_its_estimate(tiny_model_dir):
    config = FitConfig(lora_rank=4, steps=1, seq_length=32)
    auto = run_fit_test("tiny", 8.0, "cpu", config, synthetic=True).to_dict()
    assert auto["status"] == "pass" and auto["config"]["step_mode"] == "fast"
    expected = step_mode_for(TINY.architecture, "cpu", config, 8.0)
    assert auto["estimate_gb"] == expected.estimate_gb == round(estimate_for(TINY.architecture, "cpu", config, 8.0)
                                                                .total_gb, 3)
    assert f"step mode {expected.reason}" in auto["notes"]

    plain_config = FitConfig(lora_rank=4, steps=1, seq_length=32, step_mode="plain")
    plain = run_fit_test("tiny", 8.0, "cpu", plain_config, synthetic=True).to_dict()
    assert plain["status"] == "pass" and plain["config"]["step_mode"] == "plain"
    assert plain["estimate_gb"] == plain_mode(StepShape(TINY.architecture, 2, 32, 4, 16, "cpu")).estimate_gb

    assert FitConfig(step_mode="small").cli_args()[-2:] == ["--step-mode", "small"]
    with pytest.raises(ValueError, match="cannot go with --step-mode fast"):
        FitConfig(grad_checkpoint=True, step_mode="fast")


def test_cli_says_the_mode_and_passes_it_to_the_fit_test(tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "corpus.jsonl", 4)
    result = subprocess.run(
        [sys.executable, "-m", "your_ai", "train", "--model", "tiny", "--data", "corpus.jsonl", "--max-steps", "1", "--lora-rank", "4",
         "--max-seq-length", "32", "--batch-size", "2", "--no-tensorboard", "--step-mode", "plain"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    (line,) = mode_lines(result.stdout)
    assert line.startswith("Step mode: plain: the Hugging Face forward through the full logits (--step-mode plain)")
    summary = json.loads((tmp_path / "models" / "distrust-tiny" / "training_summary.json").read_text())
    assert summary["step_mode"]["name"] == "plain"

    # the benchmark's --single-model path takes --step-mode too (the same command line, in this process)
    from click.testing import CliRunner

    from your_ai.cli import main

    fit_test = CliRunner().invoke(main, ["benchmark", "--fit-test", "tiny", "--synthetic", "--device", "cpu",
                                      "--steps", "1", "--seq-length", "32", "--lora-rank", "4", "--max-memory", "8",
                                      "--step-mode", "small"])
    assert fit_test.exit_code == 0, fit_test.output
    reported = json.loads(fit_test.stdout.split("FIT_TEST_RESULT:", 1)[1])
    assert reported["config"]["step_mode"] == "small"
    assert any(note.startswith("step mode small: 4 of 4 adapted layers recomputed") for note in reported["notes"])

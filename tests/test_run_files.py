"""Run files: `--config FILE` for train, benchmark, optimize and validate, `--print-config`, and the run.yaml
a training run writes beside its adapter, which repeats the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from test_train import write_corpus

from your_ai.cli import main
from your_ai.cli.common import given_arguments
from your_ai.cli.train import train
from your_ai.fit.plan import FitConfig
from your_ai.train.defaults import RULES

FAST = {"model": "tiny", "lora_rank": 4, "max_seq_length": 32, "batch_size": 2, "max_steps": 2,
        "no_tensorboard": True}


def invoke(*arguments: str):
    return CliRunner().invoke(main, [str(argument) for argument in arguments], catch_exceptions=False)


def run_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def printed(*arguments: str) -> dict:
    result = invoke(*arguments, "--print-config")
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def test_flags_win_over_the_run_file_which_wins_over_the_profile_and_the_defaults(tmp_path):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"model": "tiny", "batch_size": 3, "lora_rank": 12, "lora_alpha": 24,
                                   "lora_layers": 2}))
    config = run_file(tmp_path / "run.yaml", "model: tiny\nlora-rank: 8\nmax_steps: 3\nlearning_rate: 1e-4\n"
                                             "packing: false\nseed: null\n")
    settings = printed("train", "--config", config, "--max-steps", "5", "--profile", profile)
    assert settings["max_steps"] == 5  # the command line over the file
    assert settings["lora_rank"] == 8 and settings["learning_rate"] == 1e-4 and settings["packing"] is False
    assert settings["batch_size"] == 3 and settings["lora_alpha"] == 24  # the profile fills what the file leaves
    assert settings["max_seq_length"] == RULES[("demo", "cpu")].max_seq_length  # the table's default
    assert settings["seed"] == 42 and settings["step_mode"] == "auto"  # null: the default


@pytest.mark.parametrize("text, message", [
    ("model: tiny\n\nlora_rank: big\n", "run.yaml:3: lora_rank: expected a whole number >= 1, got 'big'"),
    ("model: tiny\nlora_rnk: 8\n", "run.yaml:2: unknown key 'lora_rnk' (did you mean lora_rank?)"),
    ("distrust_mode: weighted\ndistrust-mode: additive\n", "run.yaml:2: distrust-mode: given twice (also on line 1)"),
    ("save_best: maybe\n", "run.yaml:1: save_best: expected true or false, got 'maybe'"),
    ("model: tiny\nlearning_rate: -1\n", "run.yaml:2: --learning-rate must be a positive number (got -1.0)"),
    ("- model\n", "run.yaml:1: a run file is a mapping of option names to values"),
])
def test_a_bad_run_file_fails_with_one_line_naming_the_file_and_line(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    run_file(tmp_path / "run.yaml", text)
    result = invoke("train", "--config", "run.yaml", "--print-config")
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {message}") and len(result.output.splitlines()) == 1


def test_print_config_is_a_run_file_that_resolves_to_the_same_settings(tmp_path):
    first = invoke("train", "--model", "tiny", "--lora-rank", "4", "--print-config").stdout
    settings = yaml.safe_load(first)
    assert settings["batch_size"] == RULES[("demo", "cpu")].batch_size and settings["lora_alpha"] == 8.0
    assert settings["max_steps"] >= 10 and settings["data"].endswith("demo_corpus.jsonl") and settings["gpus"] == 1
    printed_file = run_file(tmp_path / "printed.yaml", first)
    assert invoke("train", "--config", printed_file, "--print-config").stdout == first


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    """A tiny run with flags, then a second run from the run.yaml the first wrote, in another directory."""
    root = tmp_path_factory.mktemp("runs")
    corpus = write_corpus(root / "corpus.jsonl")
    flags = [f"--{key.replace('_', '-')}" if value is True else f"--{key.replace('_', '-')}={value}"
             for key, value in FAST.items()]
    first = invoke("train", *flags, "--data", corpus, "--output-dir", root / "first")
    assert first.exit_code == 0, first.output
    second = invoke("train", "--config", root / "first" / "run.yaml", "--output-dir", root / "second")
    assert second.exit_code == 0, second.output
    return root / "first", root / "second"


def test_a_run_writes_its_settings_and_a_run_from_them_repeats_it(two_runs):
    first, second = two_runs
    written = [yaml.safe_load((folder / "run.yaml").read_text()) for folder in two_runs]
    assert written[0]["output_dir"].endswith("first") and written[1]["output_dir"].endswith("second")
    assert {**written[0], "output_dir": None} == {**written[1], "output_dir": None}
    assert written[0]["step_mode"] != "auto" and written[0]["packing"] in (True, False)  # as the run decided
    assert FAST.items() <= written[0].items()
    summaries = [json.loads((folder / "training_summary.json").read_text())["args"] for folder in two_runs]
    assert {**summaries[0], "output_dir": None} == {**summaries[1], "output_dir": None}
    losses = [[json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
              for folder in two_runs]
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_processes_started_for_gpus_get_the_run_files_settings_as_flags(tmp_path):
    config = run_file(tmp_path / "run.yaml", "model: tiny\nlora_rank: 8\npacking: false\ngpus: 2\nsave_best: true\n")
    context = train.make_context("train", ["--config", str(config), "--seed", "7"])
    arguments = given_arguments(context, skip=("gpus",))
    assert arguments == ["--model", "tiny", "--lora-rank", "8", "--save-best", "--no-packing", "--seed", "7"]


def test_benchmark_takes_a_run_file_with_its_own_options(tmp_path):
    config = run_file(tmp_path / "fit.yaml", "models: tiny\nmax-seq-length: 64\nsteps: 3\nsynthetic: true\n")
    settings = printed("benchmark", "--config", config, "--steps", "2")
    assert settings["max_seq_length"] == 64 and settings["steps"] == 2 and settings["synthetic"] is True
    older = run_file(tmp_path / "older.yaml", "seq_length: 32\n")  # the older name of the key still reads
    assert printed("optimize", "--config", older, "--model", "tiny")["max_seq_length"] == 32
    assert settings["batch_size"] == FitConfig.batch_size and "config" not in settings and "print_config" not in settings
    result = invoke("benchmark", "--config", run_file(tmp_path / "bad.yaml", "max_step: 3\n"))
    assert result.output.startswith("Error: ") and "unknown key 'max_step' (did you mean steps?)" in result.output


def test_an_mlx_run_writes_its_run_file(tmp_path, tiny_model_dir):
    pytest.importorskip("mlx.core")
    config = run_file(tmp_path / "run.yaml", "".join(f"{key}: {str(value).lower()}\n" for key, value in FAST.items())
                      + f"engine: mlx\ndevice: cpu\ndata: {write_corpus(tmp_path / 'corpus.jsonl')}\n")
    result = invoke("train", "--config", config, "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert written["engine"] == "mlx" and written["step_mode"] == "plain" and written["packing"] is False
    assert invoke("train", "--config", tmp_path / "out" / "run.yaml", "--print-config").exit_code == 0

"""`benchmark --gpus N` and `optimize --gpus N`: fit tests on several processes through torchrun.

On this CPU machine the processes are gloo CPU processes (`--device cpu`), as `train --gpus N --device cpu`
runs them: real torchrun, real exit codes and signals, real files. A fault is injected on one process only
(YOUR_AI_FIT_TEST_FAULT=...@process=1) to check that the benchmark names the real cause.
"""

import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from your_ai.fit import sweep as optimize_module
from your_ai.fit.benchmark import run_benchmark
from your_ai.fit.faults import FAULT_ENV
from your_ai.fit.plan import FitConfig, FitTest
from your_ai.fit.result import RESULT_PREFIX, FitResult, merge_results, result_text
from your_ai.fit.runner import FitTestRun
from your_ai.train.launch import launcher_report
from your_ai.train.parallel import pick_strategy

CPU2 = ["--gpus", "2", "--device", "cpu", "--max-seq-length", "32", "--steps", "2", "--lora-rank", "8"]


def run_cli(args, cwd, **env):
    return subprocess.run([sys.executable, "-m", "your_ai", *args], capture_output=True, text=True, timeout=300,
                          check=False, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def result_lines(stdout):
    return [FitResult.from_dict(json.loads(line[len(RESULT_PREFIX):])) for line in stdout.splitlines()
            if line.startswith(RESULT_PREFIX)]


def model_line(stdout):
    (line,) = [line for line in stdout.splitlines() if line.startswith("[1/1] tiny ")]
    return line


# ---------------------------------------------------------------------------- end to end, through the CLI

def test_benchmark_on_two_processes_shards_the_model_and_reports_the_peak_per_process(tmp_path, tiny_model_dir):
    result = run_cli(["benchmark", "--models", "tiny", "--strategy", "fsdp", *CPU2, "--output", "out.json",
                      "--log", "log.jsonl"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"on cpu, 2 processes per model \(strategy fsdp\); budget [0-9.]+ GB per process", result.stdout)
    assert re.fullmatch(r"\[1/1\] tiny +\(4M  \) \.\.\. ✓ Pass \([0-9.]+ GB peak per process, 2 processes\) "
                        r"\[est [0-9.]+ GB, fsdp\]", model_line(result.stdout))
    assert "Train it with: your-ai train --gpus 2 --device cpu --strategy fsdp --model tiny" in result.stdout
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["gpus"] == 2 and report["strategy"] == "fsdp"
    (model,) = report["models"]
    assert model["status"] == "pass" and model["processes"] == 2 and model["strategy"] == "fsdp"
    assert model["rank"] == 0 and model["peak_memory_gb"] > 0 and model["synthetic"] is False
    started = [e for e in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())
               if e["event"] == "subprocess_start"]
    assert started[0]["command"][1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def test_a_process_killed_by_sigkill_is_out_of_memory_not_a_crash(tmp_path):
    result = run_cli(["benchmark", "--models", "tiny", "--synthetic", *CPU2, "--output", "out.json", "--log",
                      "log.jsonl"], tmp_path, **{FAULT_ENV: "sigkill@process=1"})
    assert result.returncode == 1, result.stdout + result.stderr
    line = model_line(result.stdout)
    assert "✗ OOM (killed by SIGKILL, most likely by the operating system's out-of-memory killer" in line
    assert "(process 1 of 2)" in line and re.search(r"\[est [0-9.]+ GB, synthetic, ddp\]$", line)
    (model,) = json.loads((tmp_path / "out.json").read_text())["models"]
    assert model["status"] == "oom" and model["failed_process"] == 1 and model["processes"] == 2
    assert model["exit_code"] == 1  # torchrun's own code: the cause comes from its report


def test_fit_test_on_two_processes_prints_one_line(tmp_path):
    result = run_cli(["benchmark", "--fit-test", "tiny", "--synthetic", "--strategy", "fsdp", *CPU2], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = result_lines(result.stdout)  # rank 0 alone reports a pass
    assert line.status == "pass" and line.processes == 2 and line.strategy == "fsdp" and line.rank == 0
    assert line.synthetic is True and line.config["seq_length"] == 32


def test_sharded_fit_test_in_4_bits(tmp_path):
    result = run_cli(["benchmark", "--fit-test", "tiny", "--synthetic", "--strategy", "fsdp", "--quantize", "4",
                      *CPU2], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = result_lines(result.stdout)
    assert line.status == "pass" and line.strategy == "fsdp" and line.config["quantize"] == 4
    assert any(note.startswith("QLoRA: ") for note in line.notes)


def test_fit_test_out_of_memory_on_one_process_is_reported_by_that_process(tmp_path, tiny_model_dir):
    # --single-model: the old name of --fit-test
    result = run_cli(["benchmark", "--single-model", "tiny", *CPU2], tmp_path, **{FAULT_ENV: "oom@process=1"})
    assert result.returncode != 0
    merged = merge_results(result_lines(result.stdout))
    assert merged.status == "oom" and merged.rank == 1
    assert merged.error.endswith("injected for testing) (process 1 of 2)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA GPUs")
def test_gpus_without_gpus_is_refused_with_check_gpus_message(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from your_ai.cli import main

    monkeypatch.chdir(tmp_path)
    for command in (["benchmark", "--models", "tiny"], ["benchmark", "--fit-test", "tiny"],
                    ["optimize", "--model", "tiny"]):
        result = CliRunner().invoke(main, [*command, "--gpus", "2"])
        assert result.exit_code == 2, command
        assert "--gpus 2: PyTorch sees no CUDA GPU here (--device cpu runs 2 CPU processes instead)" in result.output
    assert not (tmp_path / "benchmark_log.jsonl").exists()  # refused before anything ran


# ---------------------------------------------------------------------------- the pieces

def test_over_budget_precheck_divides_the_weights_by_the_processes_under_fsdp(tmp_path):
    stream = io.StringIO()
    common = {"max_memory_gb": 10.0, "device": "cpu", "config": FitConfig(seq_length=64), "synthetic": True,
              "gpus": 2, "stream": stream}
    sharded = run_benchmark(["hermes-mistral-7b"], strategy="fsdp", log_path=tmp_path / "a.jsonl", **common)
    # 28.97 GB of fp32 weights: per process the embeddings and head whole (1.05 GB), half of the 32 layers
    # (13.96 GB) and 4 layers gathered whole (3.49 GB): 18.50 GB, still over 10 GB
    (model,) = sharded["models"]
    assert model["status"] == "over_budget" and model["processes"] == 2 and model["strategy"] == "fsdp"
    assert model["error"].startswith("the weights alone need 18.50 GB per process (sharded over 2, with the layers "
                                     "FSDP gathers whole) > 10.00 GB budget")
    replicated = run_benchmark(["hermes-mistral-7b"], strategy="ddp", log_path=tmp_path / "b.jsonl", **common)
    assert replicated["models"][0]["error"].startswith("the weights alone need 28.97 GB > 10.00 GB budget")
    auto = run_benchmark(["hermes-mistral-7b"], log_path=tmp_path / "c.jsonl", **common)
    assert auto["models"][0]["strategy"] == "fsdp"  # auto: too large for one device -> sharded


def test_optimize_runs_each_config_on_the_processes_and_records_them(tmp_path, monkeypatch):
    calls = []

    def fake_run(test, **options):  # stands in for the subprocess: a pass at a known speed
        calls.append(test)
        result = test.result("pass")
        result.peak_memory_gb, result.step_time_s, result.step_times_s = 0.5, 0.1, [0.3, 0.1]
        result.tokens_per_s, result.config["seq_length"], result.strategy = 2 * 64 * test.config.batch_size / 0.1, 64, "ddp"
        return FitTestRun(test, [], result=result, exit_code=0)

    monkeypatch.setattr(optimize_module, "run_in_subprocess", fake_run)
    outcome = optimize_module.run_optimize("tiny", max_memory_gb=8.0, device="cpu", quick=True, steps=2,
                                           seq_length=64, gpus=2, output=tmp_path / "p.json", say=lambda *_: None)
    assert calls and all(c.processes == 2 and c.strategy == "ddp" for c in calls)
    profile = json.loads((tmp_path / "p.json").read_text())
    assert profile["gpus"] == 2 and profile["strategy"] == "ddp" and profile["batch_size"] == 8
    assert all(row["processes"] == 2 for row in outcome["results"])


def test_fit_test_command_on_several_processes_runs_under_torchrun():
    command = FitTest("tiny", "cuda", FitConfig(), 8.0, synthetic=True, processes=4, strategy="fsdp").command()
    assert command[1:8] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "-m", "your_ai"]
    assert command[8:11] == ["benchmark", "--fit-test", "tiny"] and command[-2:] == ["--strategy", "fsdp"]
    assert FitTest("tiny", "cuda", FitConfig(), 8.0).command()[1:4] == ["-m", "your_ai", "benchmark"]


def test_strategy_auto_shards_only_what_does_not_fit_one_device():
    assert pick_strategy("auto", fits_one_device=True) == "ddp"
    assert pick_strategy(None, fits_one_device=False) == "fsdp"
    assert pick_strategy("ddp", fits_one_device=False) == "ddp"
    with pytest.raises(ValueError, match="--strategy 'zero' must be one of"):
        pick_strategy("zero", True)


def test_merged_results_keep_the_cause_and_the_largest_peak():
    test = FitTest("tiny", "cpu", FitConfig(), 8.0, processes=2)
    rank0 = test.result("error", "RuntimeError: Connection reset by peer (process 0 of 2)")
    rank0.peak_memory_gb, rank0.peak_host_gb = 3.0, 3.0
    rank1 = test.result("oom", "OutOfMemoryError (process 1 of 2)")
    rank1.peak_memory_gb, rank1.peak_host_gb = 2.0, 4.0
    merged = merge_results([rank0, rank1])
    assert merged.status == "oom" and merged.peak_memory_gb == 3.0 and merged.peak_host_gb == 4.0
    assert merge_results([rank0]) is rank0 and merge_results([]) is None


TORCHRUN_REPORT = """\
worker line
W1123 20:23:29.100000 3091 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 3177 closing signal SIGTERM
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1019, in run
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 3177)  (SIGTERM)
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 3178)  (SIGKILL)
======================================================"""


def test_launcher_report_names_the_root_cause():
    own, failures = launcher_report(TORCHRUN_REPORT.splitlines())
    assert own == ["worker line"]
    assert failures[0] == {"rank": 1, "exit_code": None, "signal": "SIGKILL", "root_cause": True}
    assert failures[1]["signal"] == "SIGTERM" and not failures[1]["root_cause"]
    assert launcher_report(["just a line"]) == (["just a line"], [])


def test_pass_text_on_several_gpus():
    result = FitTest("m", "cuda", FitConfig(), 80.0, estimate_gb=40.0).result("pass")
    result.peak_memory_gb, result.processes, result.strategy = 41.23, 2, "fsdp"
    assert result_text(result) == "✓ Pass (41.2 GB peak per GPU, 2 GPUs) [est 40.0 GB, fsdp]"

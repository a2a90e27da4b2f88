"""Data-parallel training as a user runs it: torchrun and `train --gpus N --device cpu`, real processes (gloo)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import write_corpus

from your_ai.train.args import TrainingArgs, TrainingArgsError, check_strategy
from your_ai.train.launch import check_gpus
from your_ai.train.parallel import DistributedError, Strategy, World

# 14 records, global batch 4: the 4th step's batch holds the epoch's last 2 samples, all on rank 0,
# so rank 1 takes part in that step with nothing to learn from.
RECORDS = 14
RUN = ["--model", "tiny", "--data", "corpus.jsonl", "--max-steps", "4", "--save-every", "2", "--warmup-steps", "1",
       "--memory-report-interval", "1", "--lora-rank", "4", "--max-seq-length", "32", "--device", "cpu"]


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240, env=child_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def one_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "your_ai", "train", *args], cwd)


def torchrun(processes: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                "-m", "your_ai", "train", *args], cwd)


def normaliser_logged(stdout: str) -> list[str]:
    return re.findall(r"normaliser d_bar = ([0-9.]+)", stdout)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def trainer_state(out: Path, step: int) -> dict:
    return json.loads((out / "checkpoints" / f"step-{step:06d}" / "trainer_state.json").read_text())


def copy_checkpoint(source: Path, step: int, target: Path) -> None:
    """``target`` as a run interrupted right after ``source``'s checkpoint of ``step``."""
    name = f"step-{step:06d}"
    shutil.copytree(source / "checkpoints" / name, target / "checkpoints" / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """One process with --batch-size 4 and two processes with --batch-size 2: the same global batches."""
    root = tmp_path_factory.mktemp("distributed")
    write_corpus(root / "corpus.jsonl", RECORDS)
    one = one_process(*RUN, "--batch-size", "4", "--output-dir", "one", "--no-tensorboard", cwd=root)
    two = torchrun(2, *RUN, "--batch-size", "2", "--output-dir", "two", cwd=root)
    return root, one, two


def test_two_processes_train_as_one_process_on_the_global_batch(runs):
    from peft import PeftModel

    from your_ai.model.load import load_model
    from your_ai.model.resolve import resolve_model

    root, one, two = runs
    assert two.stdout.count("Trained 4 steps") == 1  # rank 0 alone reports
    assert "data-parallel over 2 processes (gloo, DistributedDataParallel): global batch 4" in two.stdout
    # the weighting's normaliser comes from the whole training set, on every rank
    assert normaliser_logged(two.stdout) == normaliser_logged(one.stdout) and len(normaliser_logged(one.stdout)) == 1

    out = root / "two"
    model = PeftModel.from_pretrained(load_model(resolve_model("tiny")), out)
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    single, double = load_file(root / "one" / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert single.keys() == double.keys()
    for key in single:
        assert torch.allclose(single[key], double[key], rtol=1e-4, atol=1e-5), key
    moved = max(float((double[k] - load_file(out / "checkpoints" / "step-000002" / "adapter_model.safetensors")[k])
                      .abs().max()) for k in double)
    assert moved > 1e-4  # steps 3 and 4 changed the adapter well beyond the tolerance

    lines, reference = metrics(out), metrics(root / "one")
    assert [line["step"] for line in lines] == [1, 2, 3, 4]  # one metrics file, rank 0's lines only
    for line, expected in zip(lines, reference):
        for key in ("loss", "cross_entropy", "distrust", "grad_norm"):
            assert line[key] == pytest.approx(expected[key], rel=1e-4), (line["step"], key)
    assert len(list((out / "runs").glob("events.out.tfevents.*"))) == 1
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert trainer_state(out, 2)["position"] == {"epoch": 0, "index": 8} and trainer_state(out, 2)["world_size"] == 2


def test_resume_with_one_process_continues_at_the_saved_global_sample(runs):
    root, _, _ = runs
    copy_checkpoint(root / "two", 2, root / "fewer")
    result = one_process("--resume", "--output-dir", "fewer", "--no-tensorboard", cwd=root)
    assert "Resuming from step 2" in result.stdout
    assert "saved by 2 process(es); the run goes on with 1" in result.stdout
    out = root / "fewer"
    assert [line["step"] for line in metrics(out)] == [3, 4]
    # global sample 8 (2 steps x 4), then 2 steps x 2 samples
    assert trainer_state(out, 4)["position"] == {"epoch": 0, "index": 12}
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from"] == 2 and summary["steps"] == 4 and summary["world_size"] == 1
    assert (out / "adapter_model.safetensors").is_file()


def test_gpus_with_device_cpu_launches_two_processes_and_resumes_a_one_process_run(runs):
    root, _, _ = runs
    copy_checkpoint(root / "one", 2, root / "more")
    result = one_process("--gpus", "2", "--device", "cpu", "--resume", "--output-dir", "more", "--no-tensorboard",
                         cwd=root)
    assert result.stdout.count("Trained 4 steps") == 1
    assert "saved by 1 process(es); the run goes on with 2 from the same sample (global batch now 8)" in result.stdout
    out = root / "more"
    # global sample 8 of 14, then global batches of 2 x 4: 6 samples end epoch 0, 8 more start epoch 1
    assert trainer_state(out, 4)["position"] == {"epoch": 1, "index": 8}
    assert trainer_state(out, 4)["world_size"] == 2
    assert [line["step"] for line in metrics(out)] == [3, 4]
    assert json.loads((out / "training_summary.json").read_text())["resumed_from"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA GPUs")
def test_gpus_without_gpus_is_refused():
    with pytest.raises(DistributedError, match=re.escape(
            "--gpus 2: PyTorch sees no CUDA GPU here (--device cpu runs 2 CPU processes instead)")):
        check_gpus(2, None)
    with pytest.raises(DistributedError, match="not on MPS|MPS cannot"):
        check_gpus(2, "mps")
    check_gpus(2, "cpu")


@pytest.fixture(scope="module")
def fsdp_run(runs):
    """Two processes with sharded parameters, --batch-size 2: the same global batches as ``runs``' one process."""
    root, _, _ = runs
    return torchrun(2, *RUN, "--batch-size", "2", "--output-dir", "fsdp", "--strategy", "fsdp", "--no-tensorboard",
                    cwd=root)


def test_fsdp_trains_as_one_process_and_writes_a_full_adapter(runs, fsdp_run):
    from peft import PeftModel

    from your_ai.model.load import load_model
    from your_ai.model.resolve import resolve_model

    root, _, _ = runs
    assert fsdp_run.stdout.count("Trained 4 steps") == 1
    assert "data-parallel over 2 processes (gloo, FSDP, parameters sharded): global batch 4" in fsdp_run.stdout
    out = root / "fsdp"
    model = PeftModel.from_pretrained(load_model(resolve_model("tiny")), out)
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    single, sharded = load_file(root / "one" / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert single.keys() == sharded.keys()
    for key in single:  # full tensors, not one rank's shard
        assert single[key].shape == sharded[key].shape, key
        assert torch.allclose(single[key], sharded[key], rtol=1e-4, atol=1e-5), key
    # the checkpoint's optimizer state is the full one, numbered as one process numbers it
    step2 = Path("checkpoints") / "step-000002"
    reference, gathered = load_file(root / "one" / step2 / "optimizer.safetensors"), load_file(
        out / step2 / "optimizer.safetensors")
    assert reference.keys() == gathered.keys()
    for key in reference:
        assert torch.allclose(reference[key], gathered[key], rtol=1e-4, atol=1e-6), key
    assert [line["step"] for line in metrics(out)] == [1, 2, 3, 4]
    assert trainer_state(out, 2)["args"]["strategy"] == "fsdp" and trainer_state(out, 2)["world_size"] == 2


def test_fsdp_checkpoint_resumes_with_one_process(runs, fsdp_run):
    root, _, _ = runs
    copy_checkpoint(root / "fsdp", 2, root / "fsdp-fewer")
    result = one_process("--resume", "--output-dir", "fsdp-fewer", "--no-tensorboard", cwd=root)
    assert "Resuming from step 2" in result.stdout
    assert "saved by 2 process(es); the run goes on with 1" in result.stdout
    out = root / "fsdp-fewer"
    assert [line["step"] for line in metrics(out)] == [3, 4]
    assert trainer_state(out, 4)["position"] == {"epoch": 0, "index": 12}
    assert json.loads((out / "training_summary.json").read_text())["world_size"] == 1
    # the same as resuming the replicated run's checkpoint: the gathered state is the whole state
    copy_checkpoint(root / "two", 2, root / "ddp-fewer")
    one_process("--resume", "--output-dir", "ddp-fewer", "--no-tensorboard", cwd=root)
    a, b = load_file(out / "adapter_model.safetensors"), load_file(root / "ddp-fewer" / "adapter_model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key


def test_strategies():
    assert check_strategy(None) == check_strategy("auto") == check_strategy("ddp") == "ddp"
    assert check_strategy("fsdp") == "fsdp"
    TrainingArgs(strategy="fsdp").validate()
    with pytest.raises(TrainingArgsError, match="--strategy 'zero' must be one of auto, ddp, fsdp"):
        TrainingArgs(strategy="zero").validate()


def test_rank_slices_cover_a_global_batch_and_scale_to_its_mean():
    shared = list(range(10, 17))  # a short global batch: 7 samples for 2 ranks of 4
    ranks = [Strategy(World(rank, 2, rank)) for rank in range(2)]
    slices = [strategy.rank_slice(shared, 4) for strategy in ranks]
    assert slices == [[10, 11, 12, 13], [14, 15, 16]]
    # DDP averages over ranks: each rank's scaled mean loss averages to the mean over the global batch
    losses = {index: float(index) ** 2 for index in shared}
    averaged = sum(strategy.loss_scale(len(part), len(shared)) * sum(losses[i] for i in part) / len(part)
                   for part, strategy in zip(slices, ranks)) / 2
    assert averaged == pytest.approx(sum(losses.values()) / len(shared))
    assert ranks[1].loss_scale(0, 1) == 0.0  # a rank left without samples adds nothing
    assert Strategy().loss_scale(3, 3) == 1.0


def test_one_process_checkpoint_resumes_sharded_on_two_processes(runs, fsdp_run):
    """Each process builds the model on the meta device and reads only its shards of the base weights;
    adapters resumed from a one-process checkpoint go on as under DistributedDataParallel."""
    root, _, _ = runs
    assert re.search(r"each process read only its shards of the \d+ base weight tensors", fsdp_run.stdout)
    results = {}
    for strategy in ("fsdp", "ddp"):
        copy_checkpoint(root / "one", 2, root / f"{strategy}-more")
        results[strategy] = torchrun(2, "--resume", "--output-dir", f"{strategy}-more", "--strategy", strategy,
                                     "--no-tensorboard", cwd=root)
    assert "Resuming from step 2" in results["fsdp"].stdout
    assert "each process read only its shards" in results["fsdp"].stdout
    out = root / "fsdp-more"
    assert [line["step"] for line in metrics(out)] == [3, 4]
    a, b = load_file(root / "ddp-more" / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    resumed = load_file(root / "one" / "checkpoints" / "step-000002" / "adapter_model.safetensors")
    assert max(float((b[key] - resumed[key]).abs().max()) for key in b) > 1e-4  # steps 3 and 4 moved it


def test_sharded_loading_keeps_a_head_tied_to_the_embeddings(tmp_path, tiny_model_dir):
    """A model whose head shares the input embeddings (one tensor in its safetensors file) trains sharded
    as it trains in one process: allocating the shards must not untie the head."""
    from your_ai.model.architecture import build_random_model
    from your_ai.model.presets import TINY
    from your_ai.model.resolve import _tiny_token_ids, tiny_assets_dir

    model = build_random_model(TINY.architecture, seed=1,
                               extra_config={**_tiny_token_ids(tiny_assets_dir()), "tie_word_embeddings": True})
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path / "tied")
    for item in tiny_assets_dir().iterdir():
        shutil.copy(item, tmp_path / "tied" / item.name)
    write_corpus(tmp_path / "corpus.jsonl", 8)
    common = [*RUN[2:4], "--max-steps", "2", "--warmup-steps", "1", "--lora-rank", "4", "--max-seq-length", "32",
              "--device", "cpu", "--no-tensorboard", "--model", str(tmp_path / "tied"), "--learning-rate", "5e-5"]
    one_process(*common, "--batch-size", "4", "--output-dir", "one", cwd=tmp_path)
    sharded = torchrun(2, *common, "--batch-size", "2", "--output-dir", "fsdp", "--strategy", "fsdp", cwd=tmp_path)
    assert "read only its shards" in sharded.stdout
    a, b = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(tmp_path / "fsdp" / "adapter_model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    assert metrics(tmp_path / "fsdp")[-1]["loss"] == pytest.approx(metrics(tmp_path / "one")[-1]["loss"], rel=1e-5)


def test_strategy_auto_shards_only_a_model_too_large_for_one_device(tiny_model_dir):
    from your_ai.model.presets import TINY
    from your_ai.model.resolve import resolve_model
    from your_ai.step.memory import sharding_saves_gb
    from your_ai.train.setup import sharding_saves

    resolved, two = resolve_model("tiny"), World(rank=0, size=2, backend="gloo")
    args = TrainingArgs(model="tiny", batch_size=2, max_seq_length=64, lora_rank=4).with_defaults()
    notes: list[str] = []
    assert sharding_saves(args, two, "cpu", 50.0, resolved, notes) is None and notes == []  # fits: ddp
    assert sharding_saves(args, World(), "cpu", 0.001, resolved, notes) is None  # one process
    saved = sharding_saves(args, two, "cpu", 0.001, resolved, notes)
    assert saved == pytest.approx(sharding_saves_gb(TINY.architecture, "cpu", 2))  # < 0: 4 tiny layers gain nothing
    assert len(notes) == 1 and re.match(r"--strategy auto: the whole model does not fit one device's 0\.00 GB "
                                        r"budget \(estimated [0-9.]+ GB\), so its weights are sharded", notes[0])
    asked = TrainingArgs(model="tiny", strategy="ddp", batch_size=2, max_seq_length=64).with_defaults()
    assert sharding_saves(asked, two, "cpu", 0.001, resolved, []) is None  # asked for: kept
    asked = TrainingArgs(model="tiny", strategy="fsdp", batch_size=2, max_seq_length=64).with_defaults()
    assert sharding_saves(asked, two, "cpu", 50.0, resolved, []) == pytest.approx(saved)


def test_accelerate_launch_trains_as_torchrun_does(runs):
    """`accelerate launch` starts the processes through torchrun's machinery and sets the same variables."""
    root, _, _ = runs
    result = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "-m", "your_ai", "train", *RUN, "--batch-size", "2", "--output-dir", "accelerate",
                  "--no-tensorboard"], root)
    assert "data-parallel over 2 processes (gloo, DistributedDataParallel): global batch 4" in result.stdout
    single = load_file(root / "one" / "adapter_model.safetensors")
    launched = load_file(root / "accelerate" / "adapter_model.safetensors")
    for key in single:
        assert torch.allclose(single[key], launched[key], rtol=1e-4, atol=1e-5), key


def _worker_of_rank(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the training process of ``rank`` that torchrun started."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                status = (entry / "status").read_text()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"\nPPid:\t{launcher.pid}\n" in status and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no process of rank {rank}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the processes through /proc")
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path, tiny_model_dir):
    write_corpus(tmp_path / "corpus.jsonl", RECORDS)
    args = [*RUN, "--max-steps", "40", "--save-every", "100", "--batch-size", "2", "--output-dir", "run",
            "--no-tensorboard"]
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", "-m", "your_ai", "train", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=child_env())
    rank_1 = _worker_of_rank(launcher, 1)
    deadline = time.monotonic() + 180
    while not _first_step_logged(tmp_path / "run") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(rank_1, signal.SIGTERM)  # rank 0 gets no signal: it learns of it through the all-reduce
    out, err = launcher.communicate(timeout=180)
    stopped = metrics(tmp_path / "run")[-1]["step"]
    assert stopped < 40, out + err
    assert trainer_state(tmp_path / "run", stopped)["step"] == stopped
    assert f"Stopped by SIGTERM at step {stopped} of 40" in out
    assert "Continue with: your-ai train --model tiny --output-dir run --resume --gpus 2 --device cpu" in out
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the processes through /proc")
def test_killing_the_launcher_ends_every_training_process(tmp_path, tiny_model_dir):
    """torchrun killed with SIGKILL cannot stop its processes; they notice, stop at one step as on SIGTERM, and
    save a checkpoint of it."""
    write_corpus(tmp_path / "corpus.jsonl", RECORDS)
    args = [*RUN, "--max-steps", "100000", "--save-every", "2", "--batch-size", "2", "--output-dir", "run",
            "--no-tensorboard"]
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", "-m", "your_ai", "train", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=child_env())
    workers = [_worker_of_rank(launcher, rank) for rank in (0, 1)]
    deadline = time.monotonic() + 180
    while not list((tmp_path / "run").glob("checkpoints/step-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() and "State:\tZ" not in _status(pid) for pid in workers) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if Path(f"/proc/{pid}").exists() and "State:\tZ" not in _status(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "training processes outlived their launcher"
    stopped = metrics(tmp_path / "run")[-1]["step"]
    assert trainer_state(tmp_path / "run", stopped)["step"] == stopped  # saved at the step they stopped at


def _first_step_logged(out: Path) -> bool:
    try:
        return bool((out / "metrics.jsonl").read_text().strip())
    except OSError:
        return False


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "State:\tZ"


@pytest.mark.skipif(not hasattr(os, "fork") or not Path("/proc/self").exists(), reason="orphans a process with fork, watches /proc")
def test_a_process_orphaned_before_its_lifeline_starts_ends_too(tmp_path):
    """The launcher may die while a training process is still starting: adopted by init before it watches,
    it ends at once instead of waiting for a parent that is already gone."""
    pid_file = tmp_path / "pid"
    code = (f"import os, sys, time\n"
            f"if os.fork():\n    os._exit(0)\n"
            f"time.sleep(0.5)\n"  # the parent has exited: adopted
            f"open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{os.getppid()}}')\n"
            f"from your_ai.lifeline import end_with_parent\n"
            f"end_with_parent(poll_s=0.05, grace_s=1.0)\n"
            f"time.sleep(60)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env())
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid, parent = map(int, pid_file.read_text().split())
    if parent != 1:  # a subreaper adopted it: not the case this test is about
        os.kill(pid, signal.SIGKILL)
        pytest.skip("orphans are adopted by a subreaper here, not by init")
    while Path(f"/proc/{pid}").exists() and "State:\tZ" not in _status(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = Path(f"/proc/{pid}").exists() and "State:\tZ" not in _status(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "an orphaned process kept running"

"""Stopping `benchmark` and `optimize` leaves no fit test behind: SIGINT, SIGTERM and SIGKILL of the parent.

Real processes on the tiny model: the fit test is made to hang with the test-only YOUR_AI_FIT_TEST_FAULT=sleep:...,
the parent is signalled once its child is running, and the child (every process under it, with torchrun) must be
gone within a few seconds.
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from your_ai.fit.faults import FAULT_ENV

HANG = {FAULT_ENV: "sleep:300", "OMP_NUM_THREADS": "1"}
FIT = ["--models", "tiny", "--synthetic", "--device", "cpu", "--max-seq-length", "32", "--steps", "2"]
GONE_WITHIN_S = 5.0


def start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "your_ai", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **HANG})


def wait_for(condition, what, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, (what, proc.communicate())
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def events(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def started_child(log, proc):
    """The fit test's pid from the log's subprocess_start, once the child runs its own code (the parent watchdog
    is a second thread)."""
    def child():
        started = [e for e in events(log) if e["event"] == "subprocess_start"]
        return started[0]["pid"] if started else None

    pid = wait_for(child, "subprocess_start", proc)
    wait_for(lambda: alive(pid) and psutil.Process(pid).num_threads() >= 2, "the child's watchdog", proc)
    return pid


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_gone(pids):
    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:  # do not leave them to the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after {GONE_WITHIN_S} s: {left}"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_benchmark_kills_the_fit_test_and_is_logged(tmp_path, signum, code):
    log = tmp_path / "log.jsonl"
    proc = start(["benchmark", *FIT, "--log", str(log)], tmp_path)
    child = started_child(log, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert_gone([child])
    name = signal.Signals(signum).name
    assert proc.returncode == code, (out, err)
    assert err.strip().splitlines() == [f"Stopped by {name}: the fit test of tiny was killed (process group {child})."]
    assert f"[1/1] tiny                 (4M  ) ... ✗ Stopped by {name}" in out
    stop = events(log)[-1]
    assert stop["event"] == "benchmark_interrupted"
    assert (stop["signal"], stop["preset"], stop["pid"], stop["tested"]) == (name, "tiny", child, 0)


def test_sigkill_of_benchmark_still_ends_the_fit_test(tmp_path):
    log = tmp_path / "log.jsonl"
    proc = start(["benchmark", *FIT, "--log", str(log)], tmp_path)
    child = started_child(log, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert_gone([child])
    assert "benchmark_interrupted" not in [e["event"] for e in events(log)]  # nothing could be written


def test_sigterm_to_optimize_kills_the_fit_test(tmp_path):
    output = tmp_path / "profile.json"
    proc = start(["optimize", "--model", "tiny", "--synthetic", "--quick", "--device", "cpu", "--seq-length", "32",
                  "--steps", "2", "--output", str(output)], tmp_path)  # --seq-length: the old name of --max-seq-length
    child = wait_for(lambda: psutil.Process(proc.pid).children(), "the fit test", proc)[0].pid
    wait_for(lambda: alive(child) and psutil.Process(child).num_threads() >= 2, "the child's watchdog", proc)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert_gone([child])
    assert proc.returncode == 143, (out, err)
    assert err.strip().splitlines() == [
        f"Stopped by SIGTERM: the fit test of tiny (batch 2, rank 64, layers 4) was killed (process group {child})."]
    assert "✗ Stopped by SIGTERM" in out and not output.exists()


def on_two_processes(log, proc):
    """The pids of a fit test on two processes: torchrun and the two processes under it, once they run."""
    launcher = started_child(log, proc)

    def workers():
        found = psutil.Process(launcher).children(recursive=True)
        return found if len(found) == 2 and all(alive(p.pid) and p.num_threads() >= 2 for p in found) else None

    return [launcher, *(p.pid for p in wait_for(workers, "two processes under torchrun", proc))]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_every_process_of_a_fit_test_on_two_processes_goes(tmp_path, signum):
    log = tmp_path / "log.jsonl"
    proc = start(["benchmark", *FIT, "--gpus", "2", "--log", str(log)], tmp_path)
    pids = on_two_processes(log, proc)
    launcher = pids[0]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=90)
    assert_gone(pids)
    if signum == signal.SIGINT:
        assert proc.returncode == 130, (out, err)
        assert f"the fit test of tiny was killed (process group {launcher})" in err


@pytest.mark.slow
def test_the_timeout_kills_every_process_of_a_fit_test_on_two_processes(tmp_path):
    log = tmp_path / "log.jsonl"
    proc = start(["benchmark", *FIT, "--gpus", "2", "--timeout", "20", "--log", str(log)], tmp_path)
    pids = on_two_processes(log, proc)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "✗ Timeout (no result within 20 s" in out, (out, err)
    assert_gone(pids)


def test_ctrl_c_in_the_sweep_of_train_auto_optimize_kills_the_fit_test(tmp_path):
    proc = start(["train", "--model", "tiny", "--auto-optimize", "--device", "cpu", "--max-steps", "2"], tmp_path)
    child = wait_for(lambda: psutil.Process(proc.pid).children(), "the fit test", proc)[0].pid
    wait_for(lambda: alive(child) and psutil.Process(child).num_threads() >= 2, "the child's watchdog", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert_gone([child])
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1].startswith("Stopped by SIGINT: the fit test of tiny")
    assert "Aborted" not in err and "Traceback" not in err

"""The data commands given what a careless or hostile user gives them: lines JSON parses but Python cannot hold,
paths that are not regular files, and signals in the middle of a run (real files, processes and signals)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest

from your_ai.data.inputs import PrepareError, expand_inputs
from your_ai.data.prepare import SCRATCH_PREFIX, prepare
from your_ai.data.records import DataError, Record, iter_records, training_files
from your_ai.data.workers import WorkerFailed, ordered_map
from your_ai.errors import OutputError

GOOD = '{"text": "A patent of 1923 describing a valve.", "year": 1923}\n'


def test_lines_python_cannot_hold_are_bad_lines_and_the_rest_is_read(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text(GOOD
                    + '{"text": "x", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}\n"  # 2: nested too deeply
                    + '{"text": "x", "year": ' + "9" * 5000 + "}\n"  # 3: an integer Python will not convert
                    + '{"text": "half a character \\ud800 here"}\n'  # 4: a lone surrogate escape
                    + '{"text": "a whole one \\ud83d\\ude00 here"}\n'  # 5: a pair: one character, fine
                    + GOOD)
    items = list(iter_records(path))
    errors = {item.line: item.reason for item in items if isinstance(item, DataError)}
    assert sorted(errors) == [2, 3, 4]
    assert "nested too deeply" in errors[2]
    assert "more than" in errors[3] and "digits" in errors[3] and "set_int_max_str_digits" not in errors[3]
    assert "\\ud800" in errors[4] and "surrogate" in errors[4]
    assert [item.line for item in items if isinstance(item, Record)] == [1, 5, 6]


def _special_paths(tmp_path: Path) -> dict[str, Path]:
    paths = {"fifo": tmp_path / "fifo.jsonl", "loop": tmp_path / "loop.jsonl", "dangling": tmp_path / "dangling.jsonl"}
    os.mkfifo(paths["fifo"])
    (tmp_path / "other.jsonl").symlink_to(paths["loop"])
    paths["loop"].symlink_to(tmp_path / "other.jsonl")
    paths["dangling"].symlink_to(tmp_path / "nowhere.jsonl")
    return paths


EXPECTED = {"fifo": r"named pipe \(FIFO\), not a regular file", "loop": "symbolic link that leads back to itself",
            "dangling": "symbolic link to .*nowhere.jsonl, which does not exist"}


def test_a_fifo_a_symlink_loop_and_a_dangling_link_are_named_for_what_they_are(tmp_path):
    for kind, path in _special_paths(tmp_path).items():
        with pytest.raises(PrepareError, match=EXPECTED[kind]):
            expand_inputs([path])
        with pytest.raises(DataError, match=EXPECTED[kind]):  # read directly (score --file), never blocking
            list(iter_records(path))
        with pytest.raises(DataError, match=EXPECTED[kind]):  # train --data
            training_files(path)
        folder = tmp_path / f"data-{kind}"
        folder.mkdir()
        (folder / "train.jsonl").write_text(GOOD)
        (folder / "val.jsonl").symlink_to(path)  # a data directory's val.jsonl: named, not left out unsaid
        with pytest.raises(DataError, match="val.jsonl: is a (named pipe|symbolic link)"):
            training_files(folder)


def test_a_failed_prepare_leaves_no_output_directory_behind(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(GOOD + "[1, 2]\n")
    with pytest.raises(PrepareError, match="1 bad line"):
        prepare([raw], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prepare_removes_the_temporary_files_of_a_killed_run(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    out = tmp_path / "out"
    out.mkdir()
    abandoned = out / f"{SCRATCH_PREFIX}{gone.pid}-spill.x1y2.tmp"
    running = out / f"{SCRATCH_PREFIX}{os.getpid()}-spill.z3w4.tmp"  # a run still going on: kept
    abandoned.write_text("half")
    running.write_text("half")
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": f"document {n} on valves", "auth_weight": 0.1, "prov_entropy": 5.0})
                           + "\n" for n in range(4)))
    prepare([raw], out, balance=False)
    assert not abandoned.exists() and running.exists()
    assert (out / "train.jsonl").is_file()


def _square_or_fail(value: int) -> int:
    if value == 13:
        raise ValueError("thirteen")
    return value * value


def test_ordered_map_keeps_the_order_and_raises_a_workers_error():
    assert list(ordered_map(_square_or_fail, range(12), 2)) == [n * n for n in range(12)]
    assert list(ordered_map(_square_or_fail, range(1), 3)) == [0]  # fewer tasks than workers
    with pytest.raises(ValueError, match="thirteen"):
        list(ordered_map(_square_or_fail, range(20), 2))


def _exit_at_once(value: int) -> int:
    os._exit(3)


def test_ordered_map_names_a_worker_that_died():
    with pytest.raises(WorkerFailed, match="exit code 3"):
        list(ordered_map(_exit_at_once, range(4), 2))


_SLOW_MAP = """
import os, sys, time
from your_ai.data.workers import ordered_map

def slow(value):
    time.sleep(0.5)
    return value

if __name__ == "__main__":
    for _ in ordered_map(slow, range(1000), 2):
        pass
"""


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in found.read_text().split()] if found.exists() else []


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, not yet reaped


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_workers_end_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "slow_map.py"
    script.write_text(_SLOW_MAP)
    parent = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + 30
        while len(workers := _children(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) == 2
        parent.kill()  # SIGKILL: no clean-up code runs in the parent
        parent.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in workers), "a worker outlived its killed parent"
    finally:
        parent.kill()
        for pid in _children(parent.pid):
            os.kill(pid, signal.SIGKILL)


def _corpus(path: Path, documents: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for number in range(documents):
            handle.write(json.dumps({"text": f"Laboratory notebook entry {number}: measured the flow of valve "
                                             f"{number * 7919 % 100_003} at {number % 97} degrees; see patent "
                                             f"{number * 31 % 9973}.", "year": 1900 + number % 100}) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_stops_prepare_cleanly(tmp_path, signum):
    raw = _corpus(tmp_path / "raw.jsonl", 40_000)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text(GOOD)  # an earlier run's output: kept as it was
    run = subprocess.Popen([sys.executable, "-m", "your_ai", "prepare", "--input", str(raw), "--output", str(out),
                            "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(out.glob(f"{SCRATCH_PREFIX}*")) and time.monotonic() < deadline:  # the run is reading
        time.sleep(0.05)
    while len(_children(run.pid)) < 2 and run.poll() is None and time.monotonic() < deadline:  # and scoring
        time.sleep(0.05)
    os.killpg(run.pid, signum)  # as Ctrl-C does: every process of the group
    try:
        _, stderr = run.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        pytest.fail("prepare did not stop")
    assert run.returncode == 128 + signum
    assert stderr.strip().splitlines()[-1] == f"Stopped by {signal.Signals(signum).name}."
    assert "Traceback" not in stderr and "Process " not in stderr
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl"] and (out / "train.jsonl").read_text() == GOOD


def test_a_full_cache_disk_names_the_cache_not_the_output(tmp_path, monkeypatch, request):
    from test_errors import _mounted

    from your_ai.model.resolve import tiny_model_dir

    full = tmp_path / "full"
    full.mkdir()
    with _mounted(full, "size=64k"):
        with open(full / "filler", "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass
        monkeypatch.setenv("YOUR_AI_CACHE", str(full))
        with pytest.raises(OutputError, match=f"cannot write {full}/models/tiny-.*no space left"):
            tiny_model_dir()


def test_the_near_form_of_a_long_record_takes_a_few_times_its_size(monkeypatch):
    import tracemalloc

    from your_ai.data import dedup

    text = "Word, word. " * 200_000  # 2.4 MB of short words: a string per word would be ~20 times that
    tracemalloc.start()
    try:
        form = dedup.near_form(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert form == ("word word " * 200_000).strip()
    assert peak < 6 * len(text), f"{peak / len(text):.1f} times the text"
    monkeypatch.setattr(dedup, "_SLICE", 5)  # whitespace runs and punctuation across slices
    for sample in ("  Hello,   World! ", "a .  . b", "x_y  z\u00a0\u00a0 w ", "\ufb01ne   \u216b", ". . . ."):
        whole = unicodedata.normalize("NFKC", sample).casefold()
        assert dedup.near_form(sample) == " ".join(dedup._PUNCTUATION.sub("", whole).split())


def test_deduplicate_may_write_over_one_of_its_inputs(tmp_path):
    from your_ai.data.dedup import deduplicate

    raw = tmp_path / "raw.jsonl"
    raw.write_text(GOOD + GOOD.replace("\n", "\r\n") + '{"text": "Another document."}\n', encoding="utf-8")
    report = deduplicate([raw], raw)
    assert (report.read, report.written) == (3, 2)
    assert raw.read_text(encoding="utf-8").splitlines() == [GOOD.strip(), '{"text": "Another document."}']
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.jsonl"]

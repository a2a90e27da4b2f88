"""Running a fit test in a subprocess and classifying how it ended.

The parent starts ``your-ai benchmark --fit-test MODEL`` in its own process group, reads its one
``FIT_TEST_RESULT:`` line (``your_ai.fit.result``), reaps it with ``os.wait4`` (so even a killed child has a
measured peak RSS) and classifies what the child could not report itself from facts: killed by SIGKILL (most
likely the operating system's out-of-memory killer), or by a signal after MLX said it ran out of memory ->
``oom``; killed by another signal -> ``crashed``; no result line -> ``error`` with the child's last stderr
lines; no result within the timeout -> the whole process group is killed -> ``timeout``.

No child outlives the run: SIGINT or SIGTERM to the parent (``stop_on_signals``) kills the running child's
process group and raises ``Stopped``; when the parent itself is killed (SIGKILL), the child notices its
parent is gone and kills its own group (``your_ai.fit.watchdog``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from your_ai.files import Interrupted, interrupted_by_signals, signal_name
from your_ai.fit.plan import DEFAULT_TIMEOUT_S, FitTest
from your_ai.fit.result import (
    PHASE_PREFIX,
    FitResult,
    mlx_out_of_memory,
    parse_result_line,
)
from your_ai.fit.watchdog import PARENT_ENV
from your_ai.step import memory

POLL_S = 0.1
TAIL_LINES = 20
TORCHRUN_GRACE_S = 45.0
READER_JOIN_S = 10


# ---------------------------------------------------------------------------- stopping by a signal

class Stopped(Interrupted):
    """SIGINT or SIGTERM stopped a benchmark or optimize run; the fit test it was running (``child_pid``,
    of ``model``) was killed with its process group. The command exits with ``exit_code`` (128 + signal)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.child_pid: int | None = None
        self.model: str | None = None  # the model of the fit test running when the signal came
        self.detail: str | None = None  # its config, when that tells it apart (optimize)

    def line(self) -> str:
        """The one line that says what was stopped."""
        if self.child_pid is None:
            return f"Stopped by {self.signal_name}: no fit test was running."
        detail = f" ({self.detail})" if self.detail else ""
        return (f"Stopped by {self.signal_name}: the fit test of {self.model}{detail} was killed "
                f"(process group {self.child_pid}).")


def stop_on_signals():
    """While inside: SIGINT and SIGTERM raise ``Stopped`` in the main thread, so the running fit test's
    process group is killed on the way out (``run_in_subprocess``); ``files.interrupted_by_signals`` says the
    rest (a second signal is ignored during the cleanup, ``nohup`` is respected, nested blocks install nothing)."""
    return interrupted_by_signals(Stopped)


# ---------------------------------------------------------------------------- one fit test in a subprocess

@dataclass
class FitTestRun:
    """One child, as the parent saw it: its classified result and the facts behind it."""

    test: FitTest
    command: list[str]
    result: FitResult | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    timed_out: bool = False
    host_peak_gb: float | None = None
    duration_s: float = 0.0
    last_phase: str | None = None
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    spawn_error: str | None = None

    def facts(self) -> dict:
        return {
            "pid": self.pid, "exit_code": self.exit_code, "signal": self.signal, "timed_out": self.timed_out,
            "host_peak_gb": self.host_peak_gb, "duration_s": round(self.duration_s, 3), "last_phase": self.last_phase,
            "stderr_head": self.stderr_lines[:TAIL_LINES], "stderr_tail": self.stderr_lines[-TAIL_LINES:],
            "stdout_head": self.stdout_lines[:TAIL_LINES],
        }

    def read(self, pipe, lines: list[str], phases: bool) -> None:
        """Collect a pipe's lines (a reader thread); phase lines set ``last_phase``."""
        for line in pipe:
            line = line.rstrip("\n")
            if phases and line.startswith(PHASE_PREFIX):
                self.last_phase = line[len(PHASE_PREFIX):]
            else:
                lines.append(line)


def run_in_subprocess(test: FitTest, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                      on_start: Callable[[FitTestRun], None] | None = None,
                      on_tick: Callable[[str, float], None] | None = None) -> FitTestRun:
    """Run one fit test in its own process group and classify how it ended (``classify``). ``test.processes``
    > 1: under torchrun on that many processes with ``test.strategy`` (ddp or fsdp)."""
    run = FitTestRun(test, test.command())
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            run.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, text=True, errors="replace", bufsize=1,
            env={**os.environ, PARENT_ENV: str(os.getpid())},  # the child ends when this process is gone
        )
    except OSError as error:
        run.spawn_error = f"{type(error).__name__}: {error}"
        run.result = test.result("error", f"could not start the fit test: {run.spawn_error}")
        return run
    run.pid = process.pid
    status, usage = _wait(run, process, started, timeout_s, on_start, on_tick)
    run.duration_s = time.monotonic() - started
    run.host_peak_gb = round(memory.rusage_peak_rss_gb(usage), 3)
    if os.WIFSIGNALED(status):
        run.signal = signal_name(os.WTERMSIG(status))
    else:
        run.exit_code = os.WEXITSTATUS(status)
    run.result = classify(run, timeout_s)
    return run


def _wait(run: FitTestRun, process: subprocess.Popen, started: float, timeout_s: float, on_start, on_tick):
    """Read the child's output until it ends or times out; (wait status, rusage). Whatever ends this early
    (``Stopped``, any error) takes the child's whole process group with it."""
    readers = [threading.Thread(target=run.read, args=(process.stdout, run.stdout_lines, False), daemon=True),
               threading.Thread(target=run.read, args=(process.stderr, run.stderr_lines, True), daemon=True)]
    reaped = False
    try:
        if on_start:
            on_start(run)
        for reader in readers:
            reader.start()
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            elapsed = time.monotonic() - started
            if elapsed >= timeout_s:
                run.timed_out = True
                status, usage = _end(process.pid, run.test.processes)
                break
            if on_tick:
                on_tick(run.last_phase or "starting", elapsed)
            time.sleep(POLL_S)
        reaped = True
    except Stopped as stop:
        stop.child_pid = run.pid
        raise
    finally:
        if not reaped:  # stopped by a signal (or any error here): the child's whole group goes with us
            _end(process.pid, run.test.processes)
            process.returncode = -signal.SIGKILL
            _close(process, readers)
    process.returncode = os.waitstatus_to_exitcode(status)
    _kill_group(process.pid)  # anything the child left behind in its group
    _close(process, readers)
    return status, usage


def _end(pid: int, processes: int) -> tuple[int, object]:
    """Stop a fit test and reap it: (wait status, rusage). torchrun starts each process in a session of its
    own, so it gets SIGTERM first (it stops its processes, SIGKILL after 30 s) and the group SIGKILL only
    when it is still there after ``TORCHRUN_GRACE_S``."""
    try:
        if processes > 1:
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + TORCHRUN_GRACE_S
            while time.monotonic() < deadline:
                reaped, status, usage = os.wait4(pid, os.WNOHANG)
                if reaped:
                    return status, usage
                time.sleep(POLL_S)
        _kill_group(pid)
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:  # reaped already (a signal cut a first _end short after its wait)
        return signal.SIGKILL, None
    return status, usage


def _close(process: subprocess.Popen, readers: list[threading.Thread]) -> None:
    """Let the readers take what the ended child wrote, then close its pipes."""
    for reader in readers:
        if reader.ident is not None:  # started
            reader.join(timeout=READER_JOIN_S)
    process.stdout.close()
    process.stderr.close()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------- classifying the end

def classify(run: FitTestRun, timeout_s: float) -> FitResult:
    """The child's own result if it printed one, else what the facts of its end say (killed by SIGKILL, or
ended by a signal after MLX's out-of-memory message: oom).

    On several processes (torchrun) the results of the processes are merged (``result.merge_results``) and
    the facts are those of the process torchrun names as the root cause of the failure: a process killed by
    a signal outweighs the lost-connection error another process then reports."""
    test = run.test
    reported = parse_result_line("\n".join(run.stdout_lines))
    stderr_lines, failures = run.stderr_lines, []
    if test.processes > 1:
        from your_ai.train.launch import launcher_report

        stderr_lines, failures = launcher_report(run.stderr_lines)
    failed = failures[0] if failures else None
    result = _classified(run, reported, stderr_lines, failed, timeout_s)
    if result.estimate_gb is None:
        result.estimate_gb = test.estimate_gb
    if run.host_peak_gb is not None:  # the process's whole life, measured by this one when it ended
        result.peak_host_gb = max(result.peak_host_gb or 0.0, run.host_peak_gb)
        if result.peak_device_gb is None and result.peak_memory_gb is not None:  # no device: the host's peak
            result.peak_memory_gb = result.peak_host_gb
    result.exit_code, result.signal = run.exit_code, run.signal
    if test.processes > 1:
        result.processes, result.strategy = test.processes, result.strategy or test.strategy
        if failed:
            result.failed_process = failed["rank"]
    return result


def _classified(run: FitTestRun, reported: FitResult | None, stderr_lines: list[str], failed: dict | None,
                timeout_s: float) -> FitResult:
    died = run.signal or (failed and failed["signal"])
    where = f" (process {failed['rank']} of {run.test.processes})" if failed else ""
    if run.timed_out:
        phase = f", last phase: {run.last_phase}" if run.last_phase else ""
        return run.test.result("timeout", f"no result within {timeout_s:g} s{phase}; process group killed")
    if reported is not None and (reported.status != "error" or not died):
        if run.signal:
            reported.notes.append(f"the fit test was killed by {run.signal} after reporting")
        return reported
    if died == "SIGKILL":
        return run.test.result("oom", f"killed by SIGKILL, most likely by the operating system's out-of-memory "
                                      f"killer (peak resident memory {run.host_peak_gb:.2f} GB){where}")
    metal = [line.strip() for line in stderr_lines if mlx_out_of_memory(line)]
    if died and metal:  # MLX aborts when a Metal command buffer runs out of memory
        return run.test.result("oom", f"{metal[-1]} (ended by {died}){where}")
    if died:
        last = _last_lines(stderr_lines, 1)
        return run.test.result("crashed", f"crashed with {died}{where}" + (f": {last}" if last else ""))
    if reported is not None:
        return reported
    if run.exit_code:
        code = failed["exit_code"] if failed and failed["exit_code"] is not None else run.exit_code
        last = _last_lines(stderr_lines, 3)
        return run.test.result("error", (last or f"the fit test exited with code {code} and no message") + where)
    return run.test.result("error", "the fit test exited without a result line")


def _last_lines(lines: list[str], count: int) -> str:
    meaningful = [line.strip() for line in lines if line.strip()]
    return " | ".join(meaningful[-count:])

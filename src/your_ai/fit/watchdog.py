"""The fit test's lifeline to the benchmark that started it: when that process is gone, however it ended,
the fit test kills its own process groups (``watch_parent``)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import NoReturn

# Set by the parent to its own pid in each fit test's environment: the fit test ends when that process is gone.
PARENT_ENV = "YOUR_AI_FIT_TEST_PARENT"
PARENT_POLL_S = 0.2


def watch_parent(environ=os.environ) -> None:
    """End this fit test when the benchmark that started it (pid in ``YOUR_AI_FIT_TEST_PARENT``) is gone, however it
    ended, SIGKILL included: kill the fit test's process groups (this process's, and torchrun's above it).

    On Linux the benchmark's direct child also asks the kernel for SIGKILL when its parent dies
    (``PR_SET_PDEATHSIG``, then checks the parent is still the one expected, as it may have died before); a
    watchdog thread polling the parent every ``PARENT_POLL_S`` covers macOS and the processes under torchrun.
    Without the variable (a fit test run by hand) nothing is watched."""
    raw = environ.get(PARENT_ENV, "")
    if not raw.isdigit():
        return
    import psutil

    parent_pid = int(raw)
    if os.getppid() == parent_pid:
        _die_with_parent(parent_pid)
    try:
        parent = psutil.Process(parent_pid)
        chain = [psutil.Process(), *psutil.Process().parents()]
        top = next(process for process in chain if process.ppid() == parent_pid)  # this one, or torchrun
        groups = {os.getpgid(top.pid), os.getpgrp()} - {os.getpgid(parent_pid)}  # never the benchmark's own
    except (psutil.Error, StopIteration, OSError):  # the benchmark is gone already
        _end_fit_test(set())
    if _gone(parent):
        _end_fit_test(groups)
    direct = top.pid == os.getpid()
    threading.Thread(target=_watch, args=(parent, groups, direct), daemon=True, name="parent-watchdog").start()


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL from the kernel when the parent dies; if it died already, die now."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def _gone(process) -> bool:
    import psutil

    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _watch(parent, groups: set[int], direct: bool) -> None:
    """Poll until the parent is gone: for its direct child, until this process is reparented (a system call,
    nothing allocated while the fit test measures its peak); under torchrun, by the parent's status."""
    while (os.getppid() == parent.pid) if direct else not _gone(parent):
        time.sleep(PARENT_POLL_S)
    _end_fit_test(groups)


def _end_fit_test(groups: set[int]) -> NoReturn:
    """Kill the fit test's process groups, this process last."""
    own = os.getpgrp()
    for group in sorted(groups, key=lambda g: g == own):
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    os.kill(os.getpid(), signal.SIGKILL)


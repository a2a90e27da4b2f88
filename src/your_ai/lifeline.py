"""A process that must not outlive the process that started it: ``end_with_parent``.

A training process under torchrun (or ``accelerate launch``) waits for its peers in every collective; when
the launcher is killed (SIGKILL, an out-of-memory kill), nothing would ever end it. It ends itself instead, as
if stopped by SIGTERM: every process of the run gets the signal, so they agree on a step, save a checkpoint
and stop; a process still there after ``GRACE_S`` (a peer gone, a collective that never completes) is killed,
and ``--resume`` continues from the last checkpoint on disk."""

from __future__ import annotations

import atexit
import os
import signal
import threading

LAUNCHER_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun's agent (and accelerate launch) in every process it starts
POLL_S = 0.5
GRACE_S = 30.0


def launched_by_agent(environ=os.environ) -> bool:
    """This process was started by torchrun's elastic agent."""
    return LAUNCHER_ENV in environ


def end_with_parent(poll_s: float = POLL_S, grace_s: float = GRACE_S) -> None:
    """SIGTERM to this process when its parent is gone (it was reparented), SIGKILL ``grace_s`` seconds later if
    it is still running; checked every ``poll_s`` seconds by a thread (one system call per check) that is
    stopped and joined when the interpreter exits normally, so none is left running during its teardown."""
    parent, stopped = os.getppid(), threading.Event()

    def watch() -> None:
        while os.getppid() == parent != 1:  # 1: adopted by init already, the launcher died before this started
            if stopped.wait(poll_s):
                return
        os.kill(os.getpid(), signal.SIGTERM)
        if not stopped.wait(grace_s):
            os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, daemon=True, name="parent-lifeline")
    thread.start()

    def stop() -> None:
        stopped.set()
        thread.join()

    atexit.register(stop)

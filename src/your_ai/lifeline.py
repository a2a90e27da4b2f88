"""A process that must not outlive the process that started it: ``end_with_parent``.

A training process under torchrun (or ``accelerate launch``) waits for its peers in every collective; when
the launcher is killed (SIGKILL, an out-of-memory kill), nothing would ever end it. It ends itself instead:
its last checkpoint is on disk, written atomically, and ``--resume`` continues from it."""

from __future__ import annotations

import os
import signal
import threading
import time

LAUNCHER_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun's agent (and accelerate launch) in every process it starts
POLL_S = 0.5


def launched_by_agent(environ=os.environ) -> bool:
    """This process was started by torchrun's elastic agent."""
    return LAUNCHER_ENV in environ


def end_with_parent(poll_s: float = POLL_S) -> None:
    """Kill this process when its parent is gone (it was reparented), checked every ``poll_s`` seconds by a
    daemon thread: one system call per check, nothing allocated."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="parent-lifeline").start()

"""What a benchmark or sweep shows and records as it goes: the live line of each fit test and the
append-only JSONL event log."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from your_ai.files import writing

LIVE_UPDATE_S = 0.5


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return f"{datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


class EventLog:
    """Append-only JSONL event log: one flushed line per event, with a timestamp and the run id."""

    def __init__(self, path: str | os.PathLike | None, run_id: str):
        self.path = Path(path) if path else None
        self.run_id = run_id
        if self.path:
            with writing(self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, event: str, **fields) -> None:
        if not self.path:
            return
        record = {"timestamp": round(time.time(), 3), "time": now_iso(), "run_id": self.run_id, "event": event, **fields}
        with writing(self.path), open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class ProgressLine:
    """``[1/5] name (7B  ) ... <result>`` with, on a terminal, a live phase and elapsed time until the result."""

    def __init__(self, stream: TextIO, prefix: str):
        self.stream = stream
        self.prefix = prefix
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self._last = 0.0
        self.open = False  # started, not finished

    def start(self) -> None:
        self.open = True
        self.stream.write(self.prefix)
        self.stream.flush()

    def update(self, phase: str, elapsed: float) -> None:
        if not self.live or time.monotonic() - self._last < LIVE_UPDATE_S:
            return
        self._last = time.monotonic()
        self.stream.write(f"\r{self.prefix}{phase} ({elapsed:.0f}s)\x1b[K")
        self.stream.flush()

    def finish(self, text: str) -> None:
        self.open = False
        self.stream.write((f"\r{self.prefix}{text}\x1b[K\n") if self.live else f"{text}\n")
        self.stream.flush()


def printer(stream: TextIO):
    """A ``say(text="")`` that writes a line to ``stream`` and flushes it."""
    def say(text: str = "") -> None:
        stream.write(text + "\n")
        stream.flush()

    return say

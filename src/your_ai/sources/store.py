"""Where a download's records go: one JSONL file per source, written so that it can be resumed and is never
mistaken for complete while it is not.

While a source downloads, its records are appended to ``<source>.jsonl.partial``; ``<source>.state.json`` (written
atomically) holds how many records and bytes of it are committed and the fetcher's cursor after the last of them.
A commit flushes and fsyncs the records before the state that counts them is written, so after a kill the partial
file holds at least what the state counts: resuming cuts it back to the committed length (dropping a half-written
last line and any record not yet counted) and the fetcher continues from the cursor. Nothing is counted twice, and
no record is lost. On completion the partial file is renamed to ``<source>.jsonl``. ``manifest.json`` describes
every source downloaded in the folder.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from your_ai import __version__
from your_ai.data.records import count_lines
from your_ai.files import fsync_dir, read_json_object, write_json_atomic, writing
from your_ai.sources.table import Source

MANIFEST = "manifest.json"
COMMIT_RECORDS = 100  # a commit at least every this many records (every record for slow sources) ...
COMMIT_SECONDS = 2.0  # ... or this many seconds


@dataclass
class SourceState:
    """What a source's files hold: ``records`` and ``bytes`` committed, the fetcher's ``cursor`` after them,
    whether the file is ``complete`` and whether the source had no more records (``exhausted``)."""

    source: str
    records: int = 0
    bytes: int = 0
    cursor: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    exhausted: bool = False
    skipped: dict[str, int] = field(default_factory=dict)


def final_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.jsonl"


def partial_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.jsonl.partial"


def state_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.state.json"


def read_state(folder: Path, name: str) -> SourceState | None:
    """The source's state in ``folder``: from its state file, or (a complete file without one) counted; None when
    nothing of it is there."""
    path = state_path(folder, name)
    if path.is_file():
        try:
            values = read_json_object(path)
            state = SourceState(**{key: values[key] for key in SourceState.__dataclass_fields__ if key in values})
            if not state.complete or final_path(folder, name).is_file():
                return state
        except (ValueError, TypeError):
            pass  # an unreadable state (or a complete file since removed): go by what the files show
    final = final_path(folder, name)
    if final.is_file():
        return SourceState(source=name, records=count_lines(final), bytes=final.stat().st_size, complete=True)
    return None


class SourceFile:
    """The resumable JSONL file of one source in ``folder`` (see the module's docstring)."""

    def __init__(self, folder: Path, name: str, commit_records: int = COMMIT_RECORDS):
        self.folder, self.name, self.commit_records = folder, name, commit_records
        self.final, self.partial, self.state_file = final_path(folder, name), partial_path(folder, name), \
            state_path(folder, name)
        self.state = SourceState(source=name)
        self._handle = None
        self._pending = 0
        self._last_commit = time.monotonic()

    def open(self, restart: bool = False) -> SourceState:
        """Read the state (``restart``: forget a partial download) and, unless complete, open the partial file cut
        back to its committed length."""
        with writing(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            if restart:
                self.partial.unlink(missing_ok=True)
                self.state_file.unlink(missing_ok=True)
                self.state = SourceState(source=self.name)
            else:
                self.state = read_state(self.folder, self.name) or SourceState(source=self.name)
            if self.state.complete and self.partial.exists():
                self.partial.unlink()  # a continuation that never committed a record
            if not self.state.complete:
                self._open_partial()
        return self.state

    def reopen(self) -> None:
        """Continue a complete file (a larger limit): it becomes the partial file again."""
        with writing(self.folder):
            os.replace(self.final, self.partial)
            fsync_dir(self.folder)
            self.state.complete = self.state.exhausted = False
            self._open_partial()
            self._write_state()

    def _open_partial(self) -> None:
        if not self.partial.exists():
            self.state.records, self.state.bytes, self.state.cursor = 0, 0, {}
        self._handle = self.partial.open("ab")
        self._handle.truncate(self.state.bytes)  # what a kill left beyond the last commit
        self._handle.seek(self.state.bytes)

    def identifiers(self) -> set[str]:
        """The ``identifier`` of every record committed so far."""
        found: set[str] = set()
        path = self.final if self.state.complete else self.partial
        if not path.exists():
            return found
        with path.open("rb") as handle:
            for line in handle.read(self.state.bytes).splitlines():
                identifier = json.loads(line).get("identifier")
                if identifier is not None:
                    found.add(identifier)
        return found

    def append(self, record: dict[str, Any], cursor: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with writing(self.partial):
            self._handle.write(line)
        self.state.records += 1
        self.state.bytes += len(line)
        self.advance(cursor)

    def advance(self, cursor: dict[str, Any], skipped: str | None = None) -> None:
        """The fetcher moved on to ``cursor`` (past a record written, or one ``skipped`` for that reason)."""
        self.state.cursor = cursor
        if skipped:
            self.state.skipped[skipped] = self.state.skipped.get(skipped, 0) + 1
        self._pending += 1
        if self._pending >= self.commit_records or time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        """Make the records written so far durable, then the state that counts them."""
        if self._handle is None:
            return
        with writing(self.partial):
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._write_state()
        self._pending, self._last_commit = 0, time.monotonic()

    def finish(self, exhausted: bool) -> None:
        """Commit, then rename the partial file to the final one."""
        self.commit()
        self.close()
        with writing(self.final):
            os.replace(self.partial, self.final)
            fsync_dir(self.folder)
            self.state.complete, self.state.exhausted = True, exhausted
            self._write_state()

    def discard(self) -> None:
        """Remove the partial file and its state."""
        self.close()
        self.partial.unlink(missing_ok=True)
        self.state_file.unlink(missing_ok=True)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _write_state(self) -> None:
        write_json_atomic(self.state_file, asdict(self.state))


def record_manifest(folder: Path, source: Source, state: SourceState) -> None:
    """Add or update ``source`` in the folder's manifest.json."""
    path = folder / MANIFEST
    try:
        manifest = read_json_object(path) if path.is_file() else {}
    except ValueError:
        manifest = {}
    entries = manifest.get("sources") if isinstance(manifest.get("sources"), dict) else {}
    entries[source.name] = {
        "title": source.title, "where": source.where, "licence": source.licence,
        "auth_weight": source.auth_weight, "prov_entropy": source.prov_entropy,
        "file": (final_path if state.complete else partial_path)(folder, source.name).name,
        "records": state.records, "complete": state.complete, "exhausted": state.exhausted,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "your_ai_version": __version__,
    }
    write_json_atomic(path, {"your_ai_version": __version__, "sources": dict(sorted(entries.items()))})

"""The inputs of the data commands (prepare, deduplicate, analyze): files, globs and directories, read
line by line, with every bad line counted and passed on; and the errors that end a run."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from your_ai.data.records import DataError, Record, iter_records, not_a_file


class PrepareError(RuntimeError):
    """A run that cannot produce outputs (bad lines without ``skip_bad``, nothing left)."""


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths, globs and directories (their ``*.jsonl``, sorted) -> files, in order, once each.

    Raises ``PrepareError`` for a path that does not exist, a glob or directory that
    matches no ``.jsonl`` file, or no input at all.
    """
    files: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            files.append(path)

    for raw in paths:
        text = os.fspath(raw)
        path = Path(text)
        if path.is_dir():
            found = sorted(child for child in path.glob("*.jsonl") if child.is_file())
            if not found:
                raise PrepareError(f"directory {text} holds no *.jsonl file")
            for child in found:
                add(child)
        elif path.is_file():
            add(path)
        elif glob.has_magic(text):
            found = sorted(Path(match) for match in glob.glob(text, recursive=True) if Path(match).is_file())
            if not found:
                raise PrepareError(f"pattern {text!r} matches no file")
            for match in found:
                add(match)
        else:
            raise PrepareError(f"input {text}: {not_a_file(path)}")
    if not files:
        raise PrepareError("no input files given")
    return files


def iter_inputs(files: Sequence[Path]) -> Iterator[Record | DataError]:
    """Every line of ``files``, in order: a ``Record`` per good line, a ``DataError`` per bad one."""
    for path in files:
        yield from iter_records(path)


def no_records_left(files: Sequence[Path], lines_read: int, left_to: str) -> PrepareError:
    """The error of a run with no good record: an empty input, or every line bad or skipped."""
    if lines_read:
        return PrepareError(f"no records left to {left_to}")
    names = ", ".join(str(path) for path in files)
    return PrepareError(f"no records in {names}: the input is empty (or holds only blank lines)")


MAX_ERRORS_KEPT = 1000


class ErrorLog:
    """Counts bad lines, keeps the first ``MAX_ERRORS_KEPT`` messages, passes each on, and says
    whether the run will fail (a bad line without ``skip_bad``)."""

    def __init__(self, on_error: Callable[[DataError], None] | None = None, skip_bad: bool = False):
        self.count = 0
        self.messages: list[str] = []
        self.on_error = on_error
        self.skip_bad = skip_bad

    @property
    def failing(self) -> bool:
        """A line was bad and bad lines are not skipped: the rest is only checked, the run fails."""
        return bool(self.count) and not self.skip_bad

    def good(self, results: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        """The ``(item, result)`` pairs whose result is not a ``DataError`` (those are added here),
        none once the run is failing."""
        for item, result in results:
            if isinstance(result, DataError):
                self.add(result)
            elif not self.failing:
                yield item, result

    def add(self, error: DataError) -> None:
        self.count += 1
        if len(self.messages) < MAX_ERRORS_KEPT:
            self.messages.append(str(error))
        if self.on_error is not None:
            self.on_error(error)

    def failure(self, consequence: str = "nothing written") -> PrepareError:
        plural = "s" if self.count != 1 else ""
        return PrepareError(
            f"{self.count} bad line{plural}: {consequence} (fix them, or pass --skip-bad to leave them out)"
        )


def json_line(value: dict) -> bytes:
    """One JSONL line (UTF-8, non-ASCII kept as is)."""
    return (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8")

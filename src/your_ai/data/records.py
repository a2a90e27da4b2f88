"""Read and check JSONL records: plain text, chat (``messages``) and prompt/completion.

Every problem is reported as a ``DataError`` naming the file, the line number and the
value at fault. Nothing is dropped or altered silently: callers either stop at the first
bad line or collect them all and report them (``read_records(..., collect_errors=True)``).
``training_files`` finds a run's data: a file, or a directory with train.jsonl / val.jsonl.
The records become tokenised examples and batches in ``data.examples``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from your_ai.objective.distrust import AUTHORITY_MAX, AUTHORITY_MIN
from your_ai.objective.scoring_rules import METADATA_FIELDS

BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape of a UTF-16 surrogate
CHAT_ROLES = ("system", "user", "assistant", "tool")


class DataError(ValueError):
    """A bad record: ``file:line: reason``; ``file: reason`` for the whole file (``line`` 0: missing, empty,
    unreadable)."""

    def __init__(self, file: str | Path, line: int, reason: str):
        self.file = str(file)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.file}{f':{line}' if line else ''}: {reason}")


@dataclass
class Record:
    """One checked JSONL record. ``fields`` is the object as read, unaltered."""

    fields: dict[str, Any]
    file: str
    line: int
    kind: str  # "text", "chat" or "prompt"

    @property
    def auth_weight(self) -> float | None:
        return self.fields.get("auth_weight")

    @property
    def prov_entropy(self) -> float | None:
        return self.fields.get("prov_entropy")

    @property
    def has_scores(self) -> bool:
        return self.auth_weight is not None and self.prov_entropy is not None

    @property
    def metadata(self) -> dict[str, Any]:
        return {key: self.fields[key] for key in METADATA_FIELDS if self.fields.get(key) is not None}

    def document_text(self) -> str:
        """The text a scorer or a deduplicator looks at, whatever the record's form."""
        if self.kind == "text":
            return self.fields["text"]
        if self.kind == "chat":
            return "\n".join(message["content"] for message in self.fields["messages"])
        return f"{self.fields['prompt']}\n{self.fields['completion']}"


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    errors: list[DataError] = field(default_factory=list)


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any] | DataError]:
    """Yield ``(line_number, object)`` per non-blank line, or a ``DataError`` for a bad one.

    The one reader of JSONL files: it reads bytes and decodes each line on its own, so a line
    that is not UTF-8 (or not JSON) is reported with its own number and the lines after it are
    still read. A UTF-8 byte order mark at the start of the file is accepted. Lines end at
    ``\\n``, ``\\r\\n`` or a lone ``\\r``.
    """
    for line_number, raw in _non_blank_lines(path):
        yield _parse_line(raw, Path(path), line_number)


def count_lines(path: str | Path) -> int:
    """The non-blank lines of a JSONL file, none parsed: its number of records when every line is good."""
    return sum(1 for _ in _non_blank_lines(path))


def not_a_file(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a data file when it is not a regular file that exists (a directory, a
    named pipe or device, a broken or looping symbolic link); ``None`` when it can."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        return "file does not exist"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symbolic link that leads back to itself (a loop); point it at a file"
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return "is a directory, not a JSONL file"
    if not stat.S_ISREG(mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket or device"
        return f"is {kind}, not a regular file; save the data to a file first"
    return None


def _non_blank_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    path = Path(path)
    reason = not_a_file(path)
    if reason:
        raise DataError(path, 0, reason)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError(path, 0, "file does not exist") from None
    except IsADirectoryError:
        raise DataError(path, 0, "is a directory, not a JSONL file") from None
    except OSError as error:
        raise DataError(path, 0, f"cannot be read ({error.strerror or error})") from None
    with handle:
        line_number = 0
        for chunk in handle:
            if line_number == 0 and chunk.startswith(BOM):
                chunk = chunk[len(BOM):]
            for raw in _split_lines(chunk):
                line_number += 1
                if raw and not raw.isspace():
                    yield line_number, raw


def _split_lines(chunk: bytes) -> list[bytes]:
    """The lines of a chunk that ends at ``\\n`` (or at the end of the file), without their ends."""
    if chunk.endswith(b"\n"):
        chunk = chunk[:-2] if chunk.endswith(b"\r\n") else chunk[:-1]
    elif chunk.endswith(b"\r"):
        chunk = chunk[:-1]
    return chunk.split(b"\r") if b"\r" in chunk else [chunk]


def _parse_line(raw: bytes, path: Path, line_number: int) -> tuple[int, Any] | DataError:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return DataError(
            path, line_number,
            f"not UTF-8 text: byte 0x{raw[error.start]:02x} at position {error.start + 1} of the line "
            f"({error.reason}); save the file as UTF-8",
        )
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        return DataError(path, line_number, f"not valid JSON ({error.msg}): {line[:200].strip()[:60]!r}")
    except RecursionError:
        return DataError(path, line_number, "JSON nested too deeply to read; flatten the record")
    except ValueError:  # the one other error json.loads raises: an integer of more digits than Python converts
        return DataError(path, line_number, f"holds a number of more than {sys.get_int_max_str_digits()} digits; "
                                            "write it as a string or remove it")
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            return DataError(
                path, line_number,
                f"not text: the escape \\u{ord(error.object[error.start]):04x} is half of a UTF-16 surrogate pair "
                "with no other half; remove it or give the whole character",
            )
    return line_number, value


def check_record(value: Any, file: str | Path, line: int) -> Record:
    """Check one decoded JSON value; return a ``Record`` or raise ``DataError``."""
    if not isinstance(value, dict):
        raise DataError(file, line, f"expected a JSON object, got {type(value).__name__}")
    if "text" in value:
        kind = "text"
        _check_text(value["text"], "text", file, line)
    elif "messages" in value:
        kind = "chat"
        _check_messages(value["messages"], file, line)
    elif "prompt" in value or "completion" in value:
        kind = "prompt"
        for key in ("prompt", "completion"):
            if key not in value:
                raise DataError(file, line, f"prompt/completion record has no {key!r}")
            _check_text(value[key], key, file, line)
    else:
        raise DataError(file, line, "no 'text', 'messages' or 'prompt'/'completion' field")
    _check_scores(value, file, line)
    year = value.get("year")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
        if not (isinstance(year, str) and year.strip().isdigit()):
            raise DataError(file, line, f"year={year!r} is not a whole number")
    for key in METADATA_FIELDS:
        if key != "year" and value.get(key) is not None and not isinstance(value[key], str):
            raise DataError(file, line, f"{key}={_short(value[key])} is not a string")
    return Record(fields=value, file=str(file), line=line, kind=kind)


def _check_text(value: Any, key: str, file, line) -> None:
    if not isinstance(value, str):
        raise DataError(file, line, f"{key}={_short(value)} is not a string")
    if not value.strip():
        raise DataError(file, line, f"{key} is empty")


def _check_messages(messages: Any, file, line) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(file, line, f"messages={_short(messages)} is not a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(file, line, f"messages[{index}]={_short(message)} is not an object")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise DataError(file, line, f"messages[{index}].role={role!r} is not one of {', '.join(CHAT_ROLES)}")
        if not isinstance(message.get("content"), str):
            raise DataError(file, line, f"messages[{index}].content={_short(message.get('content'))} is not a string")
    if not any(message["role"] == "assistant" for message in messages):
        raise DataError(file, line, "messages has no assistant turn to learn from")


def _check_scores(value: dict, file, line) -> None:
    for key, low, high in (
        ("auth_weight", AUTHORITY_MIN, AUTHORITY_MAX),
        ("prov_entropy", 0.0, math.inf),
    ):
        if key not in value or value[key] is None:
            continue
        number = value[key]
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise DataError(file, line, f"{key}={_short(number)} is not a number")
        if math.isnan(number) or math.isinf(number):
            raise DataError(file, line, f"{key}={number!r} is not a finite number")
        if not low <= number <= high:
            bound = f"[{low}, {high}]" if math.isfinite(high) else f">= {low}"
            raise DataError(file, line, f"{key}={number!r} is out of range ({bound})")
    if ("auth_weight" in value) != ("prov_entropy" in value):
        missing = "prov_entropy" if "auth_weight" in value else "auth_weight"
        raise DataError(file, line, f"has only one of auth_weight/prov_entropy: {missing} is missing")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def iter_records(path: str | Path) -> Iterator[Record | DataError]:
    """Stream a JSONL file: a ``Record`` per good line, a ``DataError`` per bad one."""
    for item in iter_json_lines(path):
        if isinstance(item, DataError):
            yield item
            continue
        line_number, value = item
        try:
            yield check_record(value, path, line_number)
        except DataError as error:
            yield error


def no_records(path: str | Path) -> DataError:
    """The error for a file without a single record (empty, or only blank lines)."""
    return DataError(path, 0, "no records: the file is empty (or holds only blank lines)")


def checked_records(path: str | Path) -> Iterator[Record]:
    """The records of a JSONL file, streamed; ``DataError`` at the first bad line."""
    for item in iter_records(path):
        if isinstance(item, DataError):
            raise item
        yield item


def read_records(path: str | Path, *, collect_errors: bool = False) -> ReadResult:
    """Read a whole JSONL file. Stops at the first bad line unless ``collect_errors``."""
    if not collect_errors:
        return ReadResult(records=list(checked_records(path)))
    result = ReadResult()
    for item in iter_records(path):
        (result.errors if isinstance(item, DataError) else result.records).append(item)
    return result


# ---------------------------------------------------------------------------- training data

TRAIN_FILE = "train.jsonl"
VAL_FILE = "val.jsonl"


@dataclass
class TrainingFiles:
    train: Path
    val: Path | None


def training_files(path: str | Path) -> TrainingFiles:
    """``path`` is a JSONL file (train only) or a directory holding train.jsonl and optionally val.jsonl."""
    path = Path(path)
    if path.is_dir():
        train, val = path / TRAIN_FILE, path / VAL_FILE
        if not os.path.lexists(train):
            raise DataError(train, 0, f"file does not exist (a data directory needs {TRAIN_FILE}, optionally {VAL_FILE})")
        for file in (train, val) if os.path.lexists(val) else (train,):
            reason = not_a_file(file)
            if reason:
                raise DataError(file, 0, reason)
        return TrainingFiles(train=train, val=val if os.path.lexists(val) else None)
    reason = not_a_file(path)
    if reason:
        raise DataError(path, 0, reason)
    return TrainingFiles(train=path, val=None)

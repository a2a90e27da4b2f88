"""Writing files so that a reader never sees half of one: temporary sibling, fsync, rename.

Every file your-ai writes for a user (JSON results, profiles, reports, charts, prepared data)
goes through here, so a run that fails or is killed leaves the previous file intact. An output
that cannot be written (no space left, a read-only disk, a path under a regular file) raises
``OutputError`` naming it; ``check_writable`` finds most of those before a command does its work.
A long write can run inside ``interrupted_by_signals``, so that SIGINT or SIGTERM removes its temporary file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path
from typing import IO, Any, Iterator

from your_ai.errors import (
    ENVIRONMENT_ERROR_TYPES,
    ENVIRONMENT_ERRORS,
    OutputError,
    environment_reason,
)


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file that must hold an object; ``ValueError`` saying what is wrong with it otherwise."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"not valid JSON ({error})") from error
    if not isinstance(values, dict):
        raise ValueError("expected a JSON object")
    return values


_SHA256_SEEN: dict[tuple, str] = {}  # (path, inode, size, mtime): a file is hashed once per process


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in blocks; remembered for the process while the file is unchanged."""
    seen = _identity(path)
    if seen not in _SHA256_SEEN:
        hash_files(hashlib.sha256(), path)
    return _SHA256_SEEN[seen]


def hash_files(digest, *paths: str | os.PathLike):
    """``digest`` (a hashlib object) updated with the files' bytes one after another, read in blocks; each
    file's own sha256, computed in the same pass, is remembered for ``file_sha256``."""
    for path in paths:
        seen, own = _identity(path), hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                own.update(block)
        _SHA256_SEEN[seen] = own.hexdigest()
    return digest


def _identity(path: str | os.PathLike) -> tuple:
    stat = os.stat(path)
    return str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (a rename) to disk, where the platform allows it."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_default_permissions(path: str | os.PathLike) -> None:
    """The permissions a new file or folder gets under the user's umask, for ``path`` and, for a folder,
    everything in it (``tempfile`` creates owner-only files and folders; so does the safetensors writer)."""
    mask = current_umask()
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    if path.is_dir():
        for root, folders, files in os.walk(path):
            for name in folders:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextmanager
def writing(target: str | os.PathLike) -> Iterator[None]:
    """Turn an error of the user's environment while writing ``target`` (a file, or a folder written into:
    no space left, a read-only disk, no permission, a path under a regular file) into an ``OutputError``
    naming ``target``. An error that names another file (an input being read) passes unchanged."""
    try:
        yield
    except ENVIRONMENT_ERROR_TYPES as error:
        reason = environment_reason(error)
        if reason is None or not _concerns(error, target):
            raise
        raise OutputError(f"cannot write {target}: {reason}") from error


def _concerns(error: BaseException, target: str | os.PathLike) -> bool:
    """Whether an error names no file (a failed write does not) or names ``target``, a folder above it, a file
    inside it, or one of its hidden temporary siblings (``.NAME.*``, ``temporary_sibling``, ``staging_directory``)."""
    name = getattr(error, "filename", None)
    if name is None:
        return True
    path, target = Path(os.path.abspath(name)), Path(os.path.abspath(target))
    if path == target or path in target.parents or target in path.parents:
        return True
    return any(p.parent == target.parent and p.name.startswith(f".{target.name}.") for p in (path, *path.parents))


def check_writable(path: str | os.PathLike, *, directory: bool = False, shown_as: str | None = None) -> None:
    """Fail before any work when ``path`` (a file, or a ``directory`` to write into) cannot be written: an
    ``OutputError`` naming it as ``shown_as`` (default: the path). A full disk shows only when writing."""
    target = Path(path).expanduser().absolute()
    name = shown_as or str(path)
    if target.is_dir() and not directory:
        raise OutputError(f"cannot write {name}: {target} is a directory; give a file path")
    if target.exists() and not target.is_dir() and directory:
        raise OutputError(f"cannot write {name}: {target} is a file, not a directory; choose another path")
    folder = target if target.is_dir() else target.parent  # where the new files go
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {name}: {folder} is a file, not a directory; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(folder).f_flag & os.ST_RDONLY else errno.EACCES
        raise OutputError(f"cannot write {name}: {folder}: {ENVIRONMENT_ERRORS[code]}")


def temporary_sibling(target: str | os.PathLike, mode: str = "wb") -> IO:
    """An open temporary file next to ``target`` (hidden, ``.tmp`` suffix), with the
    permissions a new file would get. The caller renames or removes it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    encoding = None if "b" in mode else "utf-8"
    handle = tempfile.NamedTemporaryFile(
        mode, dir=target.parent, prefix=f".{target.name}.{_writer()}.", suffix=".tmp", delete=False,
        encoding=encoding,
    )
    give_default_permissions(handle.name)
    return handle


def staging_directory(target: str | os.PathLike) -> Path:
    """A new hidden folder beside ``target`` (its parents created), to fill and then rename to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{_writer()}.", dir=target.parent))


def _writer() -> str:
    """This process as the names of its temporary siblings carry it (host-pid), so that a later run can tell
    the leftovers of a writer that was killed (``remove_leftovers``)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``target`` (``temporary_sibling``, ``staging_directory``) that a process
    of this host left when it was killed (SIGKILL, the out-of-memory killer); those of a running process stay.
    Returns the paths removed."""
    target = Path(target)
    host, removed = socket.gethostname(), []
    for entry in target.parent.glob(f".{glob_escape(target.name)}.*"):
        rest = entry.name[len(target.name) + 2:].removesuffix(".tmp")
        writer_host, _, pid = rest.rpartition(".")[0].rpartition("-")
        if writer_host != host or not pid.isdigit() or _running(int(pid)):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned(folder: str | os.PathLike, prefix: str) -> None:
    """Remove the files and folders in ``folder`` named ``PREFIX<pid>-...`` whose process is gone (a run killed
    with SIGKILL, or a machine that went down, leaves its temporary files behind)."""
    for path in Path(folder).glob(f"{glob_escape(prefix)}*"):
        pid = path.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``target`` through a temporary sibling that replaces it only if the block succeeds;
    ``OutputError`` naming ``target`` when the environment refuses (see ``writing``)."""
    target = Path(target)
    with writing(target):
        handle = temporary_sibling(target, mode)
        try:
            with handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, target)
            fsync_dir(target.parent)
        finally:
            if os.path.exists(handle.name):
                os.unlink(handle.name)


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM arrived inside ``interrupted_by_signals``; the command exits with ``exit_code``
    (128 + the signal's number)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@contextmanager
def interrupted_by_signals(error: type[Interrupted] = Interrupted) -> Iterator[None]:
    """While inside: SIGINT and SIGTERM raise ``error`` (``Interrupted`` or a kind of it) in the main thread,
    so the ``finally`` blocks that remove a temporary file or staging folder run (Python's default for SIGTERM
    ends the process at once, leaving them). After the first signal both are ignored until the block is left,
    so a second Ctrl-C cannot cut that cleanup short. A signal ignored from the start (``nohup``) stays
    ignored; outside the main thread, and in a block nested in another, nothing is installed."""
    numbers = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or _interrupting.is_set():
        yield
        return
    previous = {number: signal.getsignal(number) for number in numbers}

    def interrupt(signum, _frame):
        for number in numbers:
            signal.signal(number, signal.SIG_IGN)
        raise error(signum)

    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, interrupt)
    _interrupting.set()
    try:
        yield
    finally:
        _interrupting.clear()
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


_interrupting = threading.Event()  # set while interrupted_by_signals' handlers are installed



def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON, written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_figure_atomic(figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """A matplotlib figure as PNG, written atomically; the figure is closed afterwards."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path) as handle:
            figure.savefig(handle, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    return Path(path)

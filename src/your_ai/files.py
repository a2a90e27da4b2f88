"""Writing files so that a reader never sees half of one: temporary sibling, fsync, rename.

Every file your-ai writes for a user (JSON results, profiles, reports, charts, prepared data)
goes through here, so a run that fails or is killed leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


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


def temporary_sibling(target: str | os.PathLike, mode: str = "wb") -> IO:
    """An open temporary file next to ``target`` (hidden, ``.tmp`` suffix), with the
    permissions a new file would get. The caller renames or removes it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    encoding = None if "b" in mode else "utf-8"
    handle = tempfile.NamedTemporaryFile(
        mode, dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False, encoding=encoding
    )
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(handle.name, 0o666 & ~mask)
    return handle


@contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``target`` through a temporary sibling that replaces it only if the block succeeds."""
    target = Path(target)
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

"""Build a Hugging Face hub cache on disk exactly as huggingface_hub lays it out.

    <cache>/models--<org>--<name>/blobs/<sha256 of file>
    <cache>/models--<org>--<name>/snapshots/<commit>/<file> -> ../../blobs/<sha256>
    <cache>/models--<org>--<name>/refs/main                  (the commit hash)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_snapshot(cache: Path, hub_id: str, source_dir: Path, commit: str, *, set_main: bool = True) -> Path:
    """Add ``source_dir``'s files as snapshot ``commit`` of ``hub_id``; point refs/main at it."""
    repo = Path(cache) / ("models--" + hub_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(Path(source_dir).rglob("*")):
        if not file.is_file():
            continue
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / file.relative_to(source_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    if set_main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot


def fake_commit(label: str) -> str:
    """A 40-hex commit id derived from ``label``."""
    return hashlib.sha1(label.encode()).hexdigest()

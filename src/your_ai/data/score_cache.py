"""A data file's record scores, computed once and kept in the cache: later runs do not read the file again.

A run needs every training record's ``auth_weight`` and ``prov_entropy`` before it starts (the objective's
normaliser is their mean distrust value), and their number (the default steps). The first run reads them
in one streaming pass over the file (``your_ai.data.scores.score_records``: carried values as they are,
the others scored, in ``workers`` processes), stopping at the first bad line, and keeps them as one
``.npz`` file keyed by

- the data file's content (its sha256),
- the scorer: the sha256 of the code that reads and scores records (``SCORER_MODULES``), so any change
  to the record checks or the scoring rules computes them again.

The file is written under a temporary name and renamed into place; one that does not load or does not
match its key is removed and computed again, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from your_ai.data import records as records_module
from your_ai.data import score_tables, scores
from your_ai.data.records import DataError, checked_records
from your_ai.errors import OutputError
from your_ai.files import atomic_file, file_sha256
from your_ai.objective import scoring, scoring_patterns

SCORER_MODULES = (records_module, scores, score_tables, scoring, scoring_patterns)
FORMAT = "your-ai record scores 1"


@dataclass(frozen=True)
class FileScores:
    """Each record's ``auth_weight`` and ``prov_entropy`` in file order, and how many were computed
    by the scorer (the others were carried by the records)."""

    auth_weights: np.ndarray
    prov_entropies: np.ndarray
    computed: int

    def __len__(self) -> int:
        return len(self.auth_weights)


def scorer_fingerprint() -> str:
    """A sha256 that changes whenever the code that reads or scores records changes."""
    digest = hashlib.sha256(FORMAT.encode())
    for module in SCORER_MODULES:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def read_file_scores(path: str | Path, workers: int = 1) -> FileScores:
    """Every record's scores, in one streaming pass over ``path`` (memory: the two arrays)."""
    weights, entropies, computed = array("d"), array("d"), 0
    for _, result in scores.score_records(checked_records(path), workers):
        if isinstance(result, DataError):
            raise result
        weight, entropy, scored_here = result
        weights.append(float(weight))
        entropies.append(float(entropy))
        computed += scored_here
    return FileScores(np.frombuffer(weights, dtype=np.float64), np.frombuffer(entropies, dtype=np.float64), computed)


def cached_file_scores(cache_dir: Path, path: str | Path, workers: int = 1) -> tuple[FileScores, str]:
    """``path``'s scores and ``"reused"`` when ``cache_dir`` holds them, else read, kept there, and
    ``"computed"`` (``"computed, not kept"`` when the cache cannot be written)."""
    key = hashlib.sha256(f"{file_sha256(path)} {scorer_fingerprint()}".encode()).hexdigest()
    entry = Path(cache_dir) / f"{key}.npz"
    if entry.exists():
        loaded = _load(entry, key)
        if loaded is not None:
            return loaded, "reused"
        with contextlib.suppress(OSError):
            entry.unlink()
    found = read_file_scores(path, workers)
    try:
        _save(entry, key, found)
    except (OSError, OutputError):  # a cache that cannot be written: the scores are used, not kept
        return found, "computed, not kept"
    return found, "computed"


def _load(entry: Path, key: str) -> FileScores | None:
    try:
        with np.load(entry, allow_pickle=False) as stored:
            header = json.loads(bytes(stored["header"]).decode())
            weights, entropies = stored["auth_weights"], stored["prov_entropies"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    if header.get("key") != key or len(weights) != header.get("records") or len(entropies) != len(weights):
        return None
    return FileScores(weights, entropies, int(header.get("computed", 0)))


def _save(entry: Path, key: str, found: FileScores) -> None:
    header = json.dumps({"format": FORMAT, "key": key, "records": len(found), "computed": found.computed})
    with atomic_file(entry) as file:
        np.savez(file, header=np.frombuffer(header.encode(), dtype=np.uint8),
                 auth_weights=found.auth_weights, prov_entropies=found.prov_entropies)

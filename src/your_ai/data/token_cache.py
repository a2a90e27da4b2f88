"""The tokenized cache: a data file's records tokenized once, kept as numpy memory-mapped files.

A run tokenizes its records (``tokenize_record``) into a cache entry the first time; later runs
and resumed runs open that entry instead. An entry is a directory named by its key, the sha256 of

- the data file's content (its sha256),
- the tokenizer (its class, name, size, end-of-sequence id, chat template and the full
  serialised vocabulary and rules of a fast tokenizer, or the vocabulary of a slow one),
- ``max_seq_length``,
- ``TOKENIZATION_VERSION``, raised whenever the record-kind rules of ``tokenize_record`` change.

It holds ``input_ids.bin`` and ``labels.bin`` (int32, every record's tokens one after another),
``offsets.bin`` (int64, where each record starts, plus the end) and ``header.json`` (the key, the
counts, the dtypes). The distrust inputs (``auth_weight``, ``prov_entropy``) are not cached: they
come from the run's own scores, so an entry never holds stale scores.

The build streams: records are tokenized in chunks (in ``workers`` processes when there are
many) and appended to files in a staging directory, which is renamed into place only when
complete, so a build that is killed leaves no entry. Opening an entry checks the header, the file
sizes and the offsets; an entry that fails a check is removed and built again, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from your_ai.data.examples import Example, tokenize_record
from your_ai.data.records import DataError, Record, checked_records
from your_ai.data.workers import ordered_map
from your_ai.files import file_sha256, remove_abandoned
from your_ai.objective.distrust import IGNORE_INDEX

# Raise when tokenize_record's rules for a record kind change: every entry built before is then unused.
TOKENIZATION_VERSION = 1
FORMAT = "your-ai tokenized cache 1"
HEADER_FILE = "header.json"
ARRAYS = {"input_ids": np.int32, "labels": np.int32, "offsets": np.int64}
TOKENIZE_CHUNK = 2048  # records per task of a tokenizing process
STAGING_PREFIX = ".staging-"  # + the building process's id: an entry being built


class CacheDamaged(Exception):
    """An entry that cannot be trusted: what is wrong with it."""


@dataclass(frozen=True)
class CachedTokens:
    """An opened entry: the memory-mapped arrays and what the build counted."""

    path: Path
    input_ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    inexact: int  # chat records learned whole (the template does not render turn by turn)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def target_tokens(self) -> np.ndarray:
        """Each record's learned tokens, its first token excluded (``Example.target_tokens``); counted
        ``TOKENIZE_CHUNK`` records at a time, so memory does not grow with the corpus."""
        counts = np.zeros(len(self), dtype=np.int64)
        for low in range(0, len(self), TOKENIZE_CHUNK):
            high = min(low + TOKENIZE_CHUNK, len(self))
            base = int(self.offsets[low])
            learned = np.concatenate(
                [[0], np.cumsum(self.labels[base : int(self.offsets[high])] != IGNORE_INDEX, dtype=np.int64)])
            starts, ends = self.offsets[low:high] - base, self.offsets[low + 1 : high + 1] - base
            first = np.where(ends > starts, learned[np.minimum(starts + 1, ends)] - learned[starts], 0)
            counts[low:high] = learned[ends] - learned[starts] - first
        return counts


class CachedExamples(Sequence):
    """The examples of a cache entry with the run's scores: a read-only list of ``Example``,
    each built from the memory-mapped tokens when it is asked for."""

    def __init__(self, tokens: CachedTokens, weights: Sequence[float], entropies: Sequence[float]):
        if len(weights) != len(tokens) or len(entropies) != len(tokens):
            raise ValueError(f"{len(tokens)} cached records but {len(weights)} scores")
        self.tokens, self.weights, self.entropies = tokens, weights, entropies

    def __len__(self) -> int:
        return len(self.tokens)

    def lengths(self) -> list[int]:
        """Each example's token count, from the offsets alone (no example is built)."""
        return np.diff(self.tokens.offsets).tolist()

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = int(self.tokens.offsets[index]), int(self.tokens.offsets[index + 1])
        return Example(self.tokens.input_ids[start:end].tolist(), self.tokens.labels[start:end].tolist(),
                       self.weights[index], self.entropies[index])


# ---------------------------------------------------------------------------- the key


def tokenizer_fingerprint(tokenizer) -> str:
    """A sha256 that changes whenever the tokenizer could tokenize a record differently."""
    digest = hashlib.sha256()
    described = {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "size": len(tokenizer),
        "eos": tokenizer.eos_token_id,
        "chat_template": getattr(tokenizer, "chat_template", None),
        "is_fast": bool(getattr(tokenizer, "is_fast", False)),
    }
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()


def cache_key(data_sha256: str, tokenizer_sha256: str, max_seq_length: int) -> str:
    described = {"data": data_sha256, "tokenizer": tokenizer_sha256, "max_seq_length": max_seq_length,
                 "version": TOKENIZATION_VERSION}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- opening


def open_entry(path: Path, key: str) -> CachedTokens:
    """The entry at ``path``, checked; ``CacheDamaged`` saying why it cannot be used."""
    try:
        header = json.loads((path / HEADER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CacheDamaged(f"unreadable {HEADER_FILE}: {error}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("key") != key:
        raise CacheDamaged(f"{HEADER_FILE} is not this entry's header")
    try:
        records, tokens, inexact = int(header["records"]), int(header["tokens"]), int(header["inexact"])
    except (KeyError, TypeError, ValueError):
        raise CacheDamaged(f"{HEADER_FILE} lacks the counts") from None
    counts = {"input_ids": tokens, "labels": tokens, "offsets": records + 1}
    arrays = {name: _open_array(path / f"{name}.bin", dtype, counts[name]) for name, dtype in ARRAYS.items()}
    offsets = arrays["offsets"]
    if offsets[0] != 0 or offsets[-1] != tokens or bool(np.any(np.diff(offsets) < 0)):
        raise CacheDamaged("the record offsets are inconsistent")
    return CachedTokens(path, arrays["input_ids"], arrays["labels"], offsets, inexact)


def _open_array(path: Path, dtype, count: int) -> np.ndarray:
    expected = count * np.dtype(dtype).itemsize
    try:
        size = path.stat().st_size
    except OSError:
        raise CacheDamaged(f"{path.name} is missing") from None
    if size != expected:
        raise CacheDamaged(f"{path.name} holds {size} bytes, {expected} expected")
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


# ---------------------------------------------------------------------------- building


def build_entry(path: Path, key: str, records: Iterable[Record], tokenizer, max_seq_length: int,
                workers: int = 1) -> CachedTokens:
    """Tokenize ``records`` into a new entry at ``path``, written in a staging directory beside it
    and renamed into place when complete. An entry that another process completed first is used."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path.parent, STAGING_PREFIX)  # of builds killed before they finished
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=path.parent))
    try:
        _write_entry(staging, key, _tokenized(records, tokenizer, max_seq_length, workers))
        try:
            os.rename(staging, path)
        except OSError:
            if not path.exists():
                raise
            # Another process (a rank of the same run) completed it first: use theirs.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return open_entry(path, key)


def remove_entry(path: Path) -> None:
    """Set a damaged entry aside (renamed, so no reader sees it half removed), then remove it."""
    aside = path.with_name(f".damaged-{path.name[:16]}-{os.getpid()}")
    try:
        os.rename(path, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _write_entry(directory: Path, key: str, chunks: Iterator[list[tuple[list[int], list[int], bool]]]) -> None:
    records = tokens = inexact = 0
    with contextlib.ExitStack() as stack:
        handles = {name: stack.enter_context(open(directory / f"{name}.bin", "wb")) for name in ARRAYS}
        handles["offsets"].write(np.zeros(1, dtype=ARRAYS["offsets"]).tobytes())
        for chunk in chunks:
            lengths = np.fromiter((len(ids) for ids, _, _ in chunk), dtype=np.int64, count=len(chunk))
            handles["offsets"].write((tokens + np.cumsum(lengths)).astype(ARRAYS["offsets"]).tobytes())
            count = int(lengths.sum())
            for index, name in enumerate(("input_ids", "labels")):
                values = itertools.chain.from_iterable(result[index] for result in chunk)
                handles[name].write(np.fromiter(values, dtype=ARRAYS[name], count=count).tobytes())
            inexact += sum(1 for _, _, exact in chunk if not exact)
            records += len(chunk)
            tokens += count
        for handle in handles.values():
            handle.flush()
            os.fsync(handle.fileno())
    header = {"format": FORMAT, "key": key, "records": records, "tokens": tokens, "inexact": inexact,
              "dtypes": {name: np.dtype(dtype).name for name, dtype in ARRAYS.items()},
              "tokenization_version": TOKENIZATION_VERSION}
    with open(directory / HEADER_FILE, "w", encoding="utf-8") as handle:
        json.dump(header, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _tokenized(records: Iterable[Record], tokenizer, max_seq_length: int, workers: int):
    """Chunks of ``tokenize_record`` results, in record order; several processes when there are
    enough records, with a bounded number of chunks in flight (memory stays flat)."""
    records = iter(records)
    pending = iter(lambda: list(itertools.islice(records, TOKENIZE_CHUNK)), [])
    head = list(itertools.islice(pending, 2))
    if workers <= 1 or len(head) < 2:
        for chunk in itertools.chain(head, pending):
            yield [tokenize_record(record, tokenizer, max_seq_length) for record in chunk]
        return
    for results in ordered_map(_tokenize_chunk, itertools.chain(head, pending), workers, _start_worker,
                               (tokenizer, max_seq_length)):
        yield _results(results)


def _results(chunk: list | tuple) -> list[tuple[list[int], list[int], bool]]:
    if isinstance(chunk, tuple):  # a DataError, sent back as its parts (it does not pickle)
        raise DataError(*chunk)
    return chunk


_WORKER: dict = {}


def _start_worker(tokenizer, max_seq_length: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # this process is one of several already
    _WORKER.update(tokenizer=tokenizer, max_seq_length=max_seq_length)


def _tokenize_chunk(chunk: list[Record]) -> list[tuple[list[int], list[int], bool]] | tuple[str, int, str]:
    try:
        return [tokenize_record(record, _WORKER["tokenizer"], _WORKER["max_seq_length"]) for record in chunk]
    except DataError as error:
        return error.file, error.line, error.reason


# ---------------------------------------------------------------------------- the one entry point


@dataclass(frozen=True)
class CacheUse:
    """What ``cached_tokens`` did: ``built`` or ``reused``, the entry, and a note when an entry was
    damaged and rebuilt."""

    status: str
    path: Path
    note: str | None = None


def cached_tokens(cache_dir: Path, data_file: str | Path, records: int, tokenizer, max_seq_length: int,
                  workers: int = 1) -> tuple[CachedTokens, CacheUse]:
    """The entry for the ``records`` records of ``data_file`` under ``cache_dir``: opened when it is there
    and sound, else built in a streaming pass over the file (a damaged one is removed first, with a note
    saying why)."""
    key = cache_key(file_sha256(data_file), tokenizer_fingerprint(tokenizer), max_seq_length)
    path = Path(cache_dir) / key
    note = None
    if path.exists():
        try:
            tokens = open_entry(path, key)
            if len(tokens) == records:
                return tokens, CacheUse("reused", path)
            raise CacheDamaged(f"{len(tokens)} records cached, {records} read")
        except CacheDamaged as damage:
            note = f"the tokenized cache {path} was damaged ({damage}); rebuilt it"
            remove_entry(path)
    tokens = build_entry(path, key, checked_records(data_file), tokenizer, max_seq_length, workers)
    return tokens, CacheUse("built", path, note)

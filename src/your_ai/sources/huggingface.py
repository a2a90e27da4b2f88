"""Hugging Face sources, streamed with ``datasets.load_dataset(..., streaming=True)``: only the rows taken are
read, the ``datasets`` cache is used and ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` are honoured.

With ``YOUR_AI_SOURCES_DIR`` set, a source whose folder ``$YOUR_AI_SOURCES_DIR/<source>`` exists is read from the
Parquet, JSON Lines, JSON or CSV files in it instead (a mirror, or a test), through the same ``load_dataset`` path.

Each dataset has its mapping from a row to the record's text and provenance (``ROWS``). The cursor is the
configuration (``part``) and the number of its rows read, which a resumed download skips.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from your_ai.hub_offline import offline_reason
from your_ai.sources.fetched import Fetched, make_record
from your_ai.sources.http import FetchError, Settings
from your_ai.sources.table import Source

LOCAL_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def _join(*parts: Any) -> str:
    return "\n\n".join(str(part).strip() for part in parts if isinstance(part, str) and part.strip())


def _patent(row: dict) -> tuple[str, dict]:
    return _join(row.get("abstract"), row.get("description")), {"identifier": row.get("publication_number")}


def _arxiv(row: dict) -> tuple[str, dict]:
    return _join(row.get("text")), {}


def _bigbench(row: dict) -> tuple[str, dict]:
    targets = row.get("targets")
    answer = "\n".join(str(target) for target in targets) if isinstance(targets, list) else targets
    return _join(row.get("inputs"), answer), {}


def _sciq(row: dict) -> tuple[str, dict]:
    question = f"Question: {row['question']}" if row.get("question") else None
    answer = f"Answer: {row['correct_answer']}" if row.get("correct_answer") else None
    return _join(row.get("support"), question, answer), {}


def _news(row: dict) -> tuple[str, dict]:
    return _join(row.get("article")), {"identifier": row.get("id")}


def _medical(row: dict) -> tuple[str, dict]:
    return _join(row.get("input"), row.get("output")), {}


def _wikipedia(row: dict) -> tuple[str, dict]:
    return _join(row.get("text")), {"identifier": row.get("id"), "url": row.get("url"), "title": row.get("title")}


# source name -> (row -> (text, provenance))
ROWS: dict[str, Callable[[dict], tuple[str, dict]]] = {
    "us-patents": _patent, "arxiv": _arxiv, "logic": _bigbench, "sciq": _sciq, "news": _news,
    "medical": _medical, "wikipedia": _wikipedia,
}


def local_files(settings: Settings, source: Source) -> tuple[str, list[str]] | None:
    """(builder, files) of the source's local folder under ``settings.sources_dir``; None when it has none."""
    if settings.sources_dir is None:
        return None
    folder = settings.sources_dir / source.name
    if not folder.is_dir():
        return None
    files = sorted(path for path in folder.rglob("*") if path.suffix in LOCAL_BUILDERS and path.is_file())
    builders = {LOCAL_BUILDERS[path.suffix] for path in files}
    if len(builders) != 1:
        found = "no Parquet, JSON or CSV files" if not files else "files of several formats"
        raise FetchError(f"{folder}: {found}; put one format's files there")
    return builders.pop(), [str(path) for path in files]


def huggingface_rows(source: Source, cursor: dict[str, Any], settings: Settings) -> Iterator[Fetched]:
    """The source's rows as records, from the cursor on."""
    local = local_files(settings, source)
    parts = [None] if local else list(source.configs)
    to_record = ROWS[source.name]
    part, rows = cursor.get("part", 0), cursor.get("rows", 0)
    for index in range(part, len(parts)):
        for row in _rows(source, _stream(source, parts[index], local, rows)):
            rows += 1
            text, provenance = to_record(row)
            position = {"part": index, "rows": rows}
            if not text:
                yield Fetched(position, skipped="no text")
            else:
                yield Fetched(position, make_record(source, text, **provenance))
        rows = 0


def _rows(source: Source, stream) -> Iterator[dict]:
    """The stream's rows; an error while reading them (connection, hub, file) is the source's ``FetchError``."""
    rows = iter(stream)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as error:  # the datasets library raises many kinds
            raise FetchError(f"{source.dataset or source.name}: {_describe(error)}") from error
        yield row


def _stream(source: Source, config: str | None, local: tuple[str, list[str]] | None, skip: int):
    try:
        import datasets
    except ImportError:
        raise FetchError("needs the datasets library: pip install 'your-ai[download]'") from None
    datasets.logging.disable_progress_bar()
    offline = None if local else offline_reason()  # an unreachable Hub: fail at once, not after the retries
    try:
        if local:
            builder, files = local
            stream = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
        else:
            stream = datasets.load_dataset(source.dataset, config, split=source.split, streaming=True)
    except Exception as error:  # not found, offline without a cache, no connection, a script-only dataset ...
        where = f"{source.dataset}" + (f" ({config})" if config else "")
        raise FetchError(f"{where}: {_describe(error)}" + (f" ({offline})" if offline else "")) from error
    return stream.skip(skip) if skip else stream


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


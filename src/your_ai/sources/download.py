"""``download``: fetch curated sources into one JSONL file per source, resuming where a previous run stopped.

Each source is downloaded on its own: one that cannot be reached is reported and the others go on. The outcome of
every source (records fetched, skipped and why, an error) is a ``SourceResult``; ``format_summary`` and
``format_listing`` draw the tables the command prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from your_ai.errors import UserError
from your_ai.sources.archives import archive_items, chronam_pages
from your_ai.sources.fetched import Fetched
from your_ai.sources.http import Client, FetchError, Settings
from your_ai.sources.huggingface import huggingface_rows
from your_ai.sources.store import (
    COMMIT_RECORDS,
    SourceFile,
    read_state,
    record_manifest,
)
from your_ai.sources.table import (
    ARCHIVE,
    CHRONAM,
    HUGGINGFACE,
    SOURCE_NAMES,
    SOURCES,
    Source,
)

FETCHED, UP_TO_DATE, FAILED = "fetched", "already downloaded", "failed"


@dataclass
class SourceResult:
    """What a run did for one source: ``fetched`` records this run, ``records`` in its file now, ``skipped``
    items by reason, its ``status`` and, when it failed, the ``error``."""

    source: str
    status: str = FETCHED
    fetched: int = 0
    records: int = 0
    complete: bool = False
    exhausted: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    file: str | None = None


def choose_sources(names: tuple[str, ...] | list[str]) -> list[Source]:
    """The sources named (all of them when none is), in table order; ``UserError`` for an unknown name."""
    unknown = [name for name in names if name not in SOURCE_NAMES]
    if unknown:
        raise UserError(f"unknown source {unknown[0]!r}; choose from: {', '.join(SOURCE_NAMES)} "
                        "(your-ai download --list shows them)", exit_code=2)
    return [source for source in SOURCES if not names or source.name in names]


def download(sources: list[Source], output: Path, *, limit: int | None = None, force: bool = False,
             settings: Settings | None = None,
             on_progress: Callable[[Source, int, int], None] | None = None) -> list[SourceResult]:
    """Download each source into ``output``: at most ``limit`` records each (default: the source's target)."""
    settings = settings or Settings.from_environment()
    client = Client(settings)
    return [download_source(source, output, limit or source.target, force, settings, client, on_progress)
            for source in sources]


def download_source(source: Source, output: Path, limit: int, force: bool, settings: Settings, client: Client,
                    on_progress=None) -> SourceResult:
    """One source, resumed from its state in ``output`` (``force``: from the start)."""
    # a record of an archive costs requests: each one is committed, so that a resumed run asks for none again
    file = SourceFile(output, source.name, commit_records=COMMIT_RECORDS if source.fetcher == HUGGINGFACE else 1)
    state = file.open(restart=force)
    result = SourceResult(source.name)
    # a complete file without its saved position (its state file removed) cannot be continued without repeats
    if state.complete and (state.records >= limit or state.exhausted or not state.cursor):
        result.status, result.records, result.complete, result.exhausted = UP_TO_DATE, state.records, True, \
            state.exhausted
        result.file = str(file.final)
        return result
    if state.complete:
        file.reopen()
    seen, records_before, skipped_before = file.identifiers(), file.state.records, dict(file.state.skipped)
    try:
        exhausted = _fill(file, _items(source, state.cursor, settings, client), limit, seen, source, on_progress)
        file.finish(exhausted)
    except FetchError as error:
        file.commit()
        file.close()
        result.status, result.error = FAILED, str(error)
    except BaseException:  # Ctrl-C or a bug: keep what was committed, then stop
        file.commit()
        file.close()
        raise
    result.fetched = file.state.records - records_before
    result.records, result.complete, result.exhausted = file.state.records, file.state.complete, file.state.exhausted
    result.skipped = {reason: count - skipped_before.get(reason, 0) for reason, count in file.state.skipped.items()
                      if count > skipped_before.get(reason, 0)}
    if result.status == FAILED and not file.state.records and not file.state.skipped:
        file.discard()  # nothing to resume: leave no empty file behind
        return result
    result.file = str(file.final if result.complete else file.partial)
    record_manifest(output, source, file.state)
    return result


def _fill(file: SourceFile, items: Iterator[Fetched], limit: int, seen: set[str], source: Source,
          on_progress) -> bool:
    """Append items to ``file`` until it holds ``limit`` records; whether the source ran out first."""
    if file.state.records >= limit:
        return False
    for item in items:
        identifier = item.record.get("identifier") if item.record else None
        if item.record is None or identifier in seen:
            file.advance(item.cursor, skipped=item.skipped or "duplicate")
            continue
        if identifier is not None:
            seen.add(identifier)
        file.append(item.record, item.cursor)
        if on_progress:
            on_progress(source, file.state.records, limit)
        if file.state.records >= limit:
            return False
    return True


def _items(source: Source, cursor: dict, settings: Settings, client: Client) -> Iterator[Fetched]:
    if source.fetcher == ARCHIVE:
        return archive_items(source, cursor, settings, client)
    if source.fetcher == CHRONAM:
        return chronam_pages(source, cursor, settings, client)
    return huggingface_rows(source, cursor, settings)


def nothing_fetched(results: list[SourceResult]) -> bool:
    """The rule for a failing exit code: a source failed and no record was fetched at all."""
    return any(result.status == FAILED for result in results) and not any(result.fetched for result in results)


# ------------------------------------------------------------------------------------------------ tables


def listing(output: Path) -> list[tuple[Source, str]]:
    """Every source with what ``output`` holds of it: "N complete", "N partial" or "-"."""
    rows = []
    for source in SOURCES:
        state = read_state(output, source.name) if output.is_dir() else None
        held = "-" if state is None else f"{state.records:,} {'complete' if state.complete else 'partial'}"
        rows.append((source, held))
    return rows


def format_listing(output: Path):
    from rich.table import Table

    table = Table(title=f"Curated sources (downloaded in {output})")
    for heading, justify in (("source", "left"), ("title", "left"), ("where", "left"), ("auth_weight", "right"),
                             ("prov_entropy", "right"), ("target", "right"), ("downloaded", "right"),
                             ("licence", "left")):
        table.add_column(heading, justify=justify, overflow="fold")
    for source, held in listing(output):
        table.add_row(source.name, source.title, source.where, f"{source.auth_weight:.2f}",
                      f"{source.prov_entropy:.1f}", f"{source.target:,}", held, source.licence)
    return table


def format_summary(results: list[SourceResult]):
    from rich.table import Table

    table = Table(title="Download")
    for heading, justify in (("source", "left"), ("status", "left"), ("fetched", "right"), ("records", "right"),
                             ("skipped", "left"), ("note", "left")):
        table.add_column(heading, justify=justify, overflow="fold")
    for result in results:
        skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(result.skipped.items())) or "-"
        note = result.error or ("source has no more records" if result.exhausted else "")
        if result.status == FAILED and result.records:
            note += f" (kept {result.records:,} records; run again to resume)"
        table.add_row(result.source, result.status, f"{result.fetched:,}", f"{result.records:,}", skipped, note)
    return table


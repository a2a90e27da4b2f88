"""Commands on data: download, prepare, deduplicate, analyze, score."""

from __future__ import annotations

import json
import os
import sys

import click

from your_ai.cli.common import ALPHA_OPTION, check_output, fail, is_default
from your_ai.files import interrupted_by_signals, writing

# the options more than one data command takes
SKIP_BAD_OPTION = click.option("--skip-bad", is_flag=True,
                               help="Leave bad lines out (they are still listed) instead of stopping.")
KEY_OPTION = click.option("--key", metavar="FIELD", help="Treat records with the same FIELD value as exact duplicates.")
WORKERS_OPTION = click.option("--workers", type=click.IntRange(min=1),
                              help="Processes that score documents (default: all CPUs).")


def _report_bad_line(error) -> None:
    click.echo(f"\r\033[Kbad line: {error}" if sys.stderr.isatty() else f"bad line: {error}", err=True)


def _show_progress(lines_read: int) -> None:
    click.echo(f"\r{lines_read:,} lines read", err=True, nl=False)


@click.command()
@click.argument("more_inputs", nargs=-1, metavar="[PATH]...")
@click.option("--input", "inputs", multiple=True, metavar="PATH",
              help="Raw JSONL file, glob or directory (its *.jsonl); several may follow one --input.")
@click.option("--output", "output_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for train.jsonl, val.jsonl and prepare_report.json.")
@click.option("--train-size", type=click.IntRange(min=0), help="Records to write to train.jsonl.")
@click.option("--val-size", type=click.IntRange(min=0), help="Records to write to val.jsonl.")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
              help="Share of records for val.jsonl when --val-size is not given.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed for balancing and splitting.")
@click.option("--no-balance", is_flag=True, help="Keep every tier whole instead of downsampling to the target mix.")
@SKIP_BAD_OPTION
@KEY_OPTION
@WORKERS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prepare(more_inputs, inputs, output_dir, train_size, val_size, val_fraction, seed, no_balance, skip_bad, key,
            workers, as_json):
    """Score, deduplicate, balance and split raw JSONL into train/val."""
    if not inputs and not more_inputs:
        fail("no input: pass --input PATH (a JSONL file, glob or directory)")
    if val_size is not None and not is_default(click.get_current_context(), "val_fraction"):
        given = "--train-size and --val-size set" if train_size is not None else "--val-size sets"
        fail(f"--val-fraction cannot go with --val-size: {given} the split; give one of them")
    check_output("--output", output_dir, directory=True)
    from your_ai.data.inputs import PrepareError
    from your_ai.data.prepare import format_prepare_report
    from your_ai.data.prepare import prepare as prepare_data
    from your_ai.data.scores import default_workers

    try:
        with interrupted_by_signals(), writing(output_dir):  # SIGINT or SIGTERM: the temporary files are removed
            report = prepare_data(
                list(inputs) + list(more_inputs), output_dir, train_size=train_size, val_size=val_size,
                val_fraction=val_fraction, seed=seed, balance=not no_balance, skip_bad=skip_bad, key=key,
                workers=workers or default_workers(), on_error=_report_bad_line,
                on_progress=_show_progress if sys.stderr.isatty() else None,
            )
        if sys.stderr.isatty():
            click.echo("\r\033[K", err=True, nl=False)
    except PrepareError as error:
        fail(str(error), code=1)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_prepare_report(report))


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Output file (default: <first file>.dedup.jsonl).")
@KEY_OPTION
@SKIP_BAD_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def deduplicate(files, output, key, skip_bad, as_json):
    """Remove exact and near-duplicate documents from JSONL FILES."""
    check_output("--output", output)
    from your_ai.data.dedup import deduplicate as deduplicate_files
    from your_ai.data.dedup import format_deduplicate_report
    from your_ai.data.inputs import PrepareError

    try:
        with interrupted_by_signals():  # SIGINT or SIGTERM: the temporary file is removed
            report = deduplicate_files(files, output, key=key, skip_bad=skip_bad, on_error=_report_bad_line)
    except PrepareError as error:
        fail(str(error), code=1)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_deduplicate_report(report))


@click.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG with the histograms and tier shares.")
@ALPHA_OPTION
@SKIP_BAD_OPTION
@WORKERS_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def analyze(files, plot, alpha, skip_bad, workers, as_json):
    """Report the authority / entropy / distrust distribution of JSONL FILES."""
    check_output("--plot", plot)
    from your_ai.data import analyze as analysis_report
    from your_ai.data.inputs import PrepareError
    from your_ai.data.scores import default_workers

    try:
        analysis = analysis_report.analyze(files, alpha=alpha, skip_bad=skip_bad,
                                           workers=workers or default_workers(), on_error=_report_bad_line)
    except PrepareError as error:
        fail(str(error), code=1)
    except ValueError as error:
        fail(str(error))
    click.echo(analysis_report.analysis_json(analysis) if as_json else analysis_report.format_analysis(analysis))
    if plot:
        path = analysis_report.plot_analysis(analysis, plot)
        click.echo(f"Wrote {path}", err=as_json)


@click.command()
@click.argument("text", required=False)
@click.option("--file", "file_path", type=click.Path(exists=True, dir_okay=False),
              help="Score every record of a JSONL file instead of TEXT.")
@click.option("--year", type=int, help="Year of the document (else inferred from the text).")
@click.option("--source", help="Source name, e.g. WHO.")
@click.option("--source-type", help="Source type, e.g. patent, lab_notebook, press_release, blog, encyclopedia.")
@click.option("--url", help="Where the document comes from.")
@click.option("--publisher", help="Publisher of the document.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (JSON Lines with --file).")
def score(text, file_path, year, source, source_type, url, publisher, as_json):
    """Score TEXT (or each record of --file) for authority weight and provenance entropy."""
    from rich.console import Console

    from your_ai.data import score_tables
    from your_ai.data.scores import score_file
    from your_ai.objective.scoring import score_document

    metadata = {"year": year, "source": source, "source_type": source_type, "url": url, "publisher": publisher}
    # The terminal's width (or $COLUMNS); piped output without $COLUMNS: 200, no wrapping of the tables.
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)
    if file_path is None:
        if text is None or not text.strip():
            raise click.UsageError("give the TEXT to score, or --file FILE.jsonl")
        result = score_document(text, metadata)
        if as_json:
            click.echo(json.dumps(result.to_dict(), indent=2))
        else:
            console.print(score_tables.format_document_score(result))
        return
    if text is not None:
        raise click.UsageError("give either TEXT or --file, not both")
    given = [f"--{key.replace('_', '-')}" for key, value in metadata.items() if value is not None]
    if given:
        raise click.UsageError(f"{', '.join(given)} apply to TEXT only; with --file each record carries its own metadata")
    rows, errors = score_file(file_path)
    if len(errors) == 1 and not errors[0].line:  # the whole file: empty, or not readable
        fail(str(errors[0]), code=1)
    if errors:
        for error in errors:
            click.echo(str(error), err=True)
        fail(f"{len(errors)} bad line(s) in {file_path}; nothing scored", code=1)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.to_dict()))
    else:
        console.print(score_tables.format_file_scores(rows, file_path, console.width))




def _download_progress():
    """A progress line on the terminal, redrawn at most ten times a second (and at each source's last record)."""
    import time

    drawn = [0.0]

    def show(source, records: int, limit: int) -> None:
        if time.monotonic() - drawn[0] >= 0.1 or records == limit:
            drawn[0] = time.monotonic()
            click.echo(f"\r\033[K{source.name}: {records:,}/{limit:,} records", err=True, nl=False)

    return show


@click.command()
@click.argument("names", nargs=-1, metavar="[SOURCE]...")
@click.option("--output", "output_dir", default="raw", show_default=True, type=click.Path(file_okay=False),
              help="Directory for <source>.jsonl and manifest.json.")
@click.option("--limit", type=click.IntRange(min=1), help="Records per source (default: each source's target).")
@click.option("--force", is_flag=True, help="Download again from the start, replacing what is there.")
@click.option("--list", "show_list", is_flag=True, help="Show the sources and what --output already holds.")
def download(names, output_dir, limit, force, show_list):
    """Download curated SOURCEs (default: all) as JSONL records carrying their priors and provenance."""
    from pathlib import Path

    from rich.console import Console

    from your_ai.sources import download as sources

    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)
    chosen = sources.choose_sources(names)
    if show_list:
        console.print(sources.format_listing(Path(output_dir)))
        return
    check_output("--output", output_dir, directory=True)
    results = sources.download(chosen, Path(output_dir), limit=limit, force=force,
                               on_progress=_download_progress() if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        click.echo("\r\033[K", err=True, nl=False)
    console.print(sources.format_summary(results))
    if sources.nothing_fetched(results):
        failed = sum(result.status == sources.FAILED for result in results)
        fail(f"nothing was fetched, and {failed} source(s) failed (see the table above)", code=1)

"""The tables ``your-ai score`` prints: one document's score with every component, or one line per
record of a file (one block per record on a console too narrow for the table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from your_ai.data.scores import ScoredRecord
from your_ai.objective.scoring import DocumentScore


def format_document_score(score: DocumentScore):
    """A rich table: w, H, distrust, then each component of the breakdown."""
    b = score.breakdown
    a, e = b["authority"], b["entropy"]
    table = Table(title="Document score", show_lines=False)
    table.add_column("Component")
    table.add_column("Value", justify="right")
    table.add_column("Detail")
    table.add_row("[bold]authority weight (w)[/bold]", f"[bold]{score.authority_weight:.4f}[/bold]", f"raw sum {a['raw']:+.4f}, clamped to [0, 0.99]")
    table.add_row("[bold]provenance entropy (H)[/bold]", f"[bold]{score.provenance_entropy:.4f}[/bold]", f"bits; raw sum {e['raw']:+.4f}, clamped to >= 0")
    table.add_row("[bold]distrust[/bold]", f"[bold]{score.distrust:.2f}[/bold]", f"alpha {b['distrust']['alpha']} * (ln(1 - w) + H)^2")
    year = b["year"]
    table.add_section()
    table.add_row("year", str(year["value"]) if year["value"] is not None else "-", year.get("note", "from metadata") + f"; era {year['era']}")
    table.add_section()
    inst = a["institutional"]
    table.add_row("w: age", f"{a['age']:+.2f}", year["era"])
    table.add_row("w: institutional", f"{inst['score']:+.2f}", _markers_text(inst["markers"]) + (f" (sum {inst['sum']:.2f}, cap {inst['cap']})" if inst["sum"] > inst["cap"] else ""))
    cit = a["citations"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in cit["kinds"].items() if count)
    table.add_row("w: citations", f"{cit['score']:+.2f}", f"{cit['count']} found" + (f" ({kinds})" if kinds else ""))
    st = a["source_type"]
    table.add_row("w: source type", f"{st['score']:+.2f}", f"{st['given']} -> {st['type']}" if st["given"] else "not given")
    pm = a["primary_markers"]
    table.add_row("w: primary-source markers", f"{pm['score']:+.2f}", _list_text(pm["found"], pm["counted"]))
    cp = a["consensus_phrases"]
    table.add_row("w: consensus phrases", f"{cp['score']:+.2f}", _list_text(cp["found"], cp["counted"]))
    table.add_section()
    table.add_row("H: base by age", f"{e['base']:+.2f}", year["era"])
    table.add_row("H: uneditable markers", f"{e['uneditable']['score']:+.2f}", _list_text(e["uneditable"]["found"]))
    table.add_row("H: scan / facsimile", f"{e['scan']['score']:+.2f}", _list_text(e["scan"]["found"]))
    types = e["source_types"]
    table.add_row("H: source types", f"{types['score']:+.2f}", ", ".join(f"{k} x{v}" for k, v in types["counts"].items()) or "none")
    table.add_row("H: pre-1970 indicators", f"{e['pre_1970']['score']:+.2f}", _list_text(e["pre_1970"]["found"]))
    table.add_row("H: institutional penalty", f"{e['institutional_penalty']['score']:+.2f}", f"{e['institutional_penalty']['count']} marker(s)")
    table.add_row("H: consensus penalty", f"{e['consensus_penalty']['score']:+.2f}", f"{e['consensus_penalty']['count']} phrase(s)")
    table.add_row("H: Shannon entropy", f"{e['shannon']:+.2f}", f"over {types['distinct']} source type(s) in the evidence chain")
    return table


def format_file_scores(rows: list[ScoredRecord], path: str | Path, width: int | None = None):
    """A rich table, one line per document: line, start of the text, w, H, distrust (computed),
    and the carried values where the file has any. The text column takes the width left over
    and ends in an ellipsis; a console of ``width`` columns too narrow for the numbers gets
    ``_vertical_file_scores`` instead."""
    any_carried = any(row.carried for row in rows)
    if width is not None:
        wide = Console(width=10_000)  # a measurement is capped at the console's width
        numbers_only = _file_table(rows, path, any_carried, texts=False)
        if Measurement.get(wide, wide.options, numbers_only).maximum > width:
            return _vertical_file_scores(rows, path, any_carried)
    return _file_table(rows, path, any_carried)


def _file_table(rows: list[ScoredRecord], path: str | Path, any_carried: bool, texts: bool = True):
    table = Table(
        title=f"Scores for {path}", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)
    )
    table.add_column("line", justify="right", no_wrap=True)
    table.add_column("text", min_width=8)  # the one column that gives way: its cells end in an ellipsis
    for source in ("computed", "carried") if any_carried else ("computed",):
        for label in ("w", "H", "distrust"):
            table.add_column(f"{label}\n{source}", justify="right", no_wrap=True)
    for row in rows:
        text = " ".join(row.record.document_text()[:400].split()) if texts else ""
        cells = [str(row.record.line), Text(text, no_wrap=True, overflow="ellipsis")]
        cells += [f"{row.score.authority_weight:.4f}", f"{row.score.provenance_entropy:.4f}", f"{row.score.distrust:.2f}"]
        if any_carried:
            carried = row.carried
            cells += (
                [f"{carried['auth_weight']:.4f}", f"{carried['prov_entropy']:.4f}", f"{carried['distrust']:.2f}"]
                if carried
                else ["-", "-", "-"]
            )
        table.add_row(*cells)
    return table


def _vertical_file_scores(rows: list[ScoredRecord], path: str | Path, any_carried: bool):
    """One block per document: its line and start of text, then w, H and distrust on lines of their own."""
    lines = [Text(f"Scores for {path}", style="italic")]
    for row in rows:
        text = " ".join(row.record.document_text()[:400].split())
        lines.append(Text(f"line {row.record.line}: {text}", no_wrap=True, overflow="ellipsis"))
        carried = row.carried
        for label, key, value, digits in (
            ("w", "auth_weight", row.score.authority_weight, 4),
            ("H", "prov_entropy", row.score.provenance_entropy, 4),
            ("distrust", "distrust", row.score.distrust, 2),
        ):
            line = f"  {label:<9}{value:>9.{digits}f}"
            if any_carried:
                line += f"   carried {carried[key]:.{digits}f}" if carried else "   carried -"
            lines.append(Text(line, no_wrap=True, overflow="ellipsis"))
    return Group(*lines)


def _markers_text(markers: Mapping[str, Mapping[str, Any]]) -> str:
    if not markers:
        return "none"
    return ", ".join(f"{name} {entry['score']:.2f} ({'/'.join(entry['found_in'])})" for name, entry in markers.items())


def _list_text(found: list[str], counted: int | None = None) -> str:
    if not found:
        return "none"
    text = ", ".join(found)
    if counted is not None and counted < len(found):
        text += f" (counted {counted} of {len(found)})"
    return text

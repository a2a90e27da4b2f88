"""The validation report: written as JSON, printed as a table with notes, drawn as a radar chart."""

from __future__ import annotations

import math
import os
from pathlib import Path

from rich.table import Table

from your_ai.eval.rules import PASSED_ON_KEYWORDS
from your_ai.eval.validate import SuiteRun, ValidationReport
from your_ai.files import save_figure_atomic, write_json_atomic


def write_report(report: ValidationReport, path: str | os.PathLike) -> Path:
    """The report as indented JSON, written atomically."""
    target = Path(path).expanduser()
    write_json_atomic(target, report.to_dict())
    return target


def _runs(report: ValidationReport) -> list[SuiteRun]:
    return [report.base, report.run] if report.base is not None else [report.run]


def summary_table(report: ValidationReport):
    """A rich table: passed/total, rate, threshold and PASS/FAIL per category; with --compare,
    one column per run (base, fine-tuned) side by side."""
    runs = _runs(report)
    title = f"Validation: {report.model}" + (f" + {report.checkpoint}" if report.checkpoint else "")
    table = Table(title=title)
    table.add_column("Category")
    table.add_column("Threshold", justify="right")
    if len(runs) == 1:
        for name in ("Passed", "Rate", "Result"):
            table.add_column(name, justify="right" if name != "Result" else "center")
    else:
        for run in runs:
            table.add_column(run.label, justify="right")

    def cells(passed: int, total: int, rate: float, verdict: str) -> list[str]:
        if len(runs) == 1:
            return [f"{passed}/{total}", f"{rate:.0%}", verdict]
        return [f"{passed}/{total}  {rate:>4.0%}  {verdict}"]

    for index, category in enumerate(runs[0].categories):
        row = [category.title, f"{category.threshold:.0%}"]
        for run in runs:
            mine = run.categories[index]
            row += cells(mine.passed, mine.total, mine.rate, _verdict(mine.meets_threshold))
        table.add_row(*row)
    overall = ["Overall", "all"]
    for run in runs:
        overall += ["", "", _verdict(run.passed)] if len(runs) == 1 else [_verdict(run.passed)]
    table.add_row(*overall, end_section=True)
    if runs[0].truthfulqa is not None:
        row = ["TruthfulQA MC1", "-"]
        for run in runs:
            tqa = run.truthfulqa
            row += (cells(tqa.correct, len(tqa.questions), tqa.accuracy, "") if len(runs) > 1
                    else [f"{tqa.correct}/{len(tqa.questions)}", f"{tqa.accuracy:.1%}", "-"])
        table.add_row(*row)
    return table


def report_notes(report: ValidationReport) -> list[str]:
    """Lines printed under the summary table: per run, how many passes rest on keywords alone,
    and how many answers came out empty."""
    lines = []
    for run in _runs(report):
        passes = [r for r in run.results if r.passed]
        on_keywords = [r for r in passes if r.passed_on == PASSED_ON_KEYWORDS]
        if on_keywords:
            lines.append(f"{run.label}: {len(on_keywords)} of {len(passes)} passes rest on keywords alone "
                         f"(phrase matching, not checked for truth; passed_on in the JSON report)")
        empty = sum(1 for r in run.results if r.response is not None and not r.response.strip())
        if empty:
            hint = "" if report.settings["chat"] else "; try without --raw if the model has a chat template"
            lines.append(f"{run.label}: {empty} empty answer(s): the model ended at once{hint}")
    return lines


def _verdict(passed: bool) -> str:
    return "[green]PASS[/green]" if passed else "[red]FAIL[/red]"


def plot_radar(report: ValidationReport, path: str | os.PathLike) -> Path:
    """A radar chart (PNG) of the category pass rates, with the thresholds; both runs with --compare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the file-only backend

    runs = _runs(report)
    categories = runs[0].categories
    count = len(categories)
    angles = [2 * math.pi * i / count for i in range(count)]
    closed = angles + angles[:1]

    figure = plt.figure(figsize=(7, 7))
    axes = figure.add_subplot(projection="polar")
    axes.set_theta_offset(math.pi / 2)
    axes.set_theta_direction(-1)
    thresholds = [100 * c.threshold for c in categories]
    axes.plot(closed, thresholds + thresholds[:1], "k--", linewidth=1.2, label="threshold")
    colours = {"base": "#4c72b0", "fine-tuned": "#c44e52"}
    for run in runs:
        rates = [100 * c.rate for c in run.categories]
        colour = colours.get(run.label, "#55a868")
        verdict = "PASS" if run.passed else "FAIL"
        axes.plot(closed, rates + rates[:1], color=colour, linewidth=2, marker="o", label=f"{run.label} ({verdict})")
        axes.fill(closed, rates + rates[:1], color=colour, alpha=0.15)
    axes.set_xticks(angles)
    axes.set_xticklabels([f"{c.title}\n{c.passed}/{c.total}" if len(runs) == 1 else c.title for c in categories])
    axes.set_ylim(0, 100)
    axes.set_yticks([25, 50, 75, 100])
    axes.set_yticklabels(["25%", "50%", "75%", "100%"])
    title = report.model + (f"\n+ {Path(report.checkpoint).name}" if report.checkpoint else "")
    axes.set_title(f"Validation pass rates: {title}", pad=34)
    axes.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12))
    figure.tight_layout()

    return save_figure_atomic(figure, Path(path).expanduser())

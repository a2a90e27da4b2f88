"""``analyze``: the authority / entropy / distrust distribution of a data set, as a dict (JSON), a text
report and a PNG of histograms and tier shares."""

from __future__ import annotations

import json
import math
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from your_ai.data.balance import TIERS, in_band, tier_index
from your_ai.data.inputs import ErrorLog, expand_inputs, iter_inputs, no_records_left
from your_ai.data.records import DataError, Record
from your_ai.data.scores import score_records
from your_ai.files import save_figure_atomic
from your_ai.objective.distrust import (
    DEFAULT_ALPHA,
    check_alpha,
    empirical_distrust_loss,
)

# ``analyze`` warns when a tier's share is further than this outside its target band
# (a prepared set sits on a band edge, and splitting moves shares by a record or two).
MIX_TOLERANCE = 0.02
WEIGHT_BINS = [round(0.1 * i, 1) for i in range(10)] + [1.0]


def _summary(values) -> dict[str, float | None]:
    if len(values) == 0:
        return {"min": None, "median": None, "mean": None, "max": None}
    data = np.asarray(values, dtype=np.float64)
    return {
        "min": float(data.min()),
        "median": float(np.median(data)),
        "mean": float(data.mean()),
        "max": float(data.max()),
    }


def _histogram(values, edges: Sequence[float]) -> list[dict[str, float | int]]:
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(edges, dtype=np.float64))
    return [
        {"low": float(edges[i]), "high": float(edges[i + 1]), "count": int(counts[i])} for i in range(len(counts))
    ]


@dataclass
class _Values:
    """What ``analyze`` keeps per record (three floats) and counts as it reads."""

    weights: array = field(default_factory=lambda: array("d"))
    entropies: array = field(default_factory=lambda: array("d"))
    distrusts: array = field(default_factory=lambda: array("d"))
    tier_counts: list[int] = field(default_factory=lambda: [0] * len(TIERS))
    source_types: dict[str, int] = field(default_factory=dict)
    read: int = 0
    scored_here: int = 0
    outside: int = 0

    def add(self, record: Record, weight: float, entropy: float, scored: bool, alpha: float) -> None:
        self.scored_here += scored
        self.weights.append(weight)
        self.entropies.append(entropy)
        self.distrusts.append(empirical_distrust_loss(weight, entropy, alpha))
        self.tier_counts[tier_index(weight)] += 1
        self.outside += not in_band(weight)
        source_type = record.fields.get("source_type")
        source_type = str(source_type) if source_type is not None else "unknown"
        self.source_types[source_type] = self.source_types.get(source_type, 0) + 1


def analyze(
    inputs: Iterable[str | os.PathLike],
    *,
    alpha: float | None = None,
    skip_bad: bool = False,
    workers: int = 1,
    on_error: Callable[[DataError], None] | None = None,
) -> dict[str, Any]:
    """Distribution report of a data set: tiers, source types, w / H / distrust statistics.

    Records without scores are scored, in ``workers`` processes (and counted as
    ``scored_here``). Bad lines are
    passed to ``on_error``; without ``skip_bad`` they raise ``PrepareError`` at the end.
    Keeps three floats per record in memory (for medians and histograms).
    """
    alpha = check_alpha(DEFAULT_ALPHA if alpha is None else alpha)
    files = expand_inputs(inputs)
    errors = ErrorLog(on_error, skip_bad)
    values = _read_values(files, alpha, workers, errors)
    if errors.failing:
        raise errors.failure("no report")
    records = len(values.weights)
    if not records:
        raise no_records_left(files, values.read, "analyze")
    tiers, warnings = _tier_shares(values.tier_counts, records)
    top_entropy = max(10, math.ceil(max(values.entropies)))
    return {
        "files": [str(p) for p in files],
        "read": values.read,
        "bad": errors.count,
        "records": records,
        "scored_here": values.scored_here,
        "outside_bands": values.outside,
        "tiers": tiers,
        "source_types": dict(sorted(values.source_types.items(), key=lambda kv: (-kv[1], kv[0]))),
        "auth_weight": {**_summary(values.weights), "histogram": _histogram(values.weights, WEIGHT_BINS)},
        "prov_entropy": {**_summary(values.entropies),
                         "histogram": _histogram(values.entropies, list(range(top_entropy + 1)))},
        "distrust": {**_summary(values.distrusts), "alpha": alpha},
        "warnings": warnings,
        "errors": errors.messages,
        "_values": {"auth_weight": values.weights, "prov_entropy": values.entropies, "distrust": values.distrusts},
    }


def _read_values(files: Sequence[Path], alpha: float, workers: int, errors: ErrorLog) -> _Values:
    """Read, check and score every record of ``files``; bad lines go to ``errors``. Once ``errors``
    is failing, the rest is only checked."""
    values = _Values()

    def good_records() -> Iterator[Record]:
        for item in iter_inputs(files):
            values.read += 1
            if isinstance(item, DataError):
                errors.add(item)
            elif not errors.failing:
                yield item

    for item, scores in errors.good(score_records(good_records(), workers)):
        values.add(item, *scores, alpha)
    return values


def _tier_shares(tier_counts: Sequence[int], records: int) -> tuple[dict[str, Any], list[str]]:
    """Each tier's band, count, share and target; a warning per tier whose share is off target."""
    warnings = []
    tiers: dict[str, Any] = {}
    for tier, count in zip(TIERS, tier_counts):
        share = count / records
        tiers[tier.name] = {
            "band": [tier.low, tier.high],
            "count": count,
            "share": share,
            "target": [tier.min_share, tier.max_share],
        }
        if not tier.min_share - MIX_TOLERANCE <= share <= tier.max_share + MIX_TOLERANCE:
            direction = "below" if share < tier.min_share else "above"
            warnings.append(
                f"{tier.name} authority ({tier.low:.2f}-{tier.high:.2f}) is {100 * share:.1f}% of the records, "
                f"{direction} the target {100 * tier.min_share:.0f}-{100 * tier.max_share:.0f}%"
            )
    return tiers, warnings


def analysis_json(analysis: dict[str, Any]) -> str:
    """The analysis as JSON (without the raw per-record values)."""
    return json.dumps({k: v for k, v in analysis.items() if not k.startswith("_")}, indent=2)


def _bars(histogram: list[dict], width: int = 40, digits: int = 2) -> list[str]:
    top = max((row["count"] for row in histogram), default=0) or 1
    lines = []
    for row in histogram:
        label = f"{row['low']:.{digits}f}-{row['high']:.{digits}f}"
        bar = "#" * round(width * row["count"] / top)
        lines.append(f"  {label:>11} | {bar:<{width}} {row['count']}")
    return lines


def _stats(summary: dict) -> str:
    if summary["min"] is None:
        return "no values"
    return "min {min:.3f}  median {median:.3f}  mean {mean:.3f}  max {max:.3f}".format(**summary)


def format_analysis(analysis: dict[str, Any]) -> str:
    """Text report printed by ``your-ai analyze``."""
    records = analysis["records"]
    lines = [
        f"{records} records in {len(analysis['files'])} file{'s' if len(analysis['files']) != 1 else ''}"
        f" ({analysis['scored_here']} scored here"
        + (f", {analysis['bad']} bad lines skipped)" if analysis["bad"] else ")"),
        "",
        f"{'Tier':<8} {'band':>11} {'count':>9} {'share':>7} {'target':>8}",
    ]
    for name, tier in analysis["tiers"].items():
        band = f"{tier['band'][0]:.2f}-{tier['band'][1]:.2f}"
        target = f"{100 * tier['target'][0]:.0f}-{100 * tier['target'][1]:.0f}%"
        lines.append(f"{name:<8} {band:>11} {tier['count']:>9} {100 * tier['share']:>6.1f}% {target:>8}")
    lines.append(f"({analysis['outside_bands']} records lie outside every band and count in the nearest tier)")
    lines += ["", "Source types:"]
    lines += [f"  {name:<20} {count}" for name, count in analysis["source_types"].items()]
    lines += ["", f"Authority weight: {_stats(analysis['auth_weight'])}"]
    lines += _bars(analysis["auth_weight"]["histogram"])
    lines += ["", f"Provenance entropy (bits): {_stats(analysis['prov_entropy'])}"]
    lines += _bars(analysis["prov_entropy"]["histogram"], digits=0)
    lines += ["", f"Distrust (alpha {analysis['distrust']['alpha']}): {_stats(analysis['distrust'])}"]
    if analysis["warnings"]:
        lines += [""] + [f"Warning: {warning}" for warning in analysis["warnings"]]
    return "\n".join(lines)


def plot_analysis(analysis: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG with histograms of w, H and distrust and the tier shares against the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the file-only backend

    values = analysis["_values"]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    axes[0][0].hist(values["auth_weight"], bins=WEIGHT_BINS, color="#4c72b0")
    axes[0][0].set(title="Authority weight w", xlabel="w", ylabel="records")
    entropy_edges = [row["low"] for row in analysis["prov_entropy"]["histogram"]] + [
        analysis["prov_entropy"]["histogram"][-1]["high"]
    ]
    axes[0][1].hist(values["prov_entropy"], bins=entropy_edges, color="#55a868")
    axes[0][1].set(title="Provenance entropy H", xlabel="bits", ylabel="records")
    axes[1][0].hist(values["distrust"], bins=30, color="#c44e52")
    axes[1][0].set(title=f"Distrust d (alpha {analysis['distrust']['alpha']})", xlabel="d", ylabel="records")
    names = list(analysis["tiers"])
    shares = [100 * analysis["tiers"][n]["share"] for n in names]
    axes[1][1].bar(names, shares, color="#8172b2", label="share")
    for i, name in enumerate(names):
        low, high = analysis["tiers"][name]["target"]
        axes[1][1].plot([i - 0.4, i + 0.4], [100 * low] * 2, "k--", linewidth=1)
        axes[1][1].plot([i - 0.4, i + 0.4], [100 * high] * 2, "k--", linewidth=1)
    axes[1][1].set(title="Tier shares (dashed: target band)", ylabel="% of records")
    figure.suptitle(f"{analysis['records']} records")
    figure.tight_layout()
    return save_figure_atomic(figure, path)

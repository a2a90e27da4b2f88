"""Authority tiers, balancing to their target mix, and the train/val split sizes.

Authority tiers (the target mix of a prepared training set)::

    low     0.03 <= w <= 0.20    25-30% of the records
    medium  0.40 <= w <= 0.65    25-35%
    high    0.75 <= w <= 0.95    35-40%

A weight outside every band is assigned to the nearest tier: below 0.30 is low, from
0.30 to below 0.70 is medium, 0.70 and above is high (0.30 and 0.70 are the midpoints of
the gaps between the bands). Reports count such records separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Tier:
    """An authority band and the share of a prepared set it should hold."""

    name: str
    low: float
    high: float
    min_share: float
    max_share: float


TIERS: tuple[Tier, ...] = (
    Tier("low", 0.03, 0.20, 0.25, 0.30),
    Tier("medium", 0.40, 0.65, 0.25, 0.35),
    Tier("high", 0.75, 0.95, 0.35, 0.40),
)
TIER_NAMES = tuple(tier.name for tier in TIERS)
# Weights between two bands go to the nearer one: the cut is the middle of the gap.
TIER_CUTS = tuple((TIERS[i].high + TIERS[i + 1].low) / 2 for i in range(len(TIERS) - 1))


def tier_index(authority_weight: float) -> int:
    """Index into ``TIERS`` of the tier a weight belongs to (nearest band)."""
    for index, cut in enumerate(TIER_CUTS):
        if authority_weight < cut:
            return index
    return len(TIERS) - 1


def in_band(authority_weight: float) -> bool:
    """Whether a weight lies inside its tier's band (not merely nearest to it)."""
    tier = TIERS[tier_index(authority_weight)]
    return tier.low <= authority_weight <= tier.high


# --------------------------------------------------------------------------- balance


@dataclass
class BalancePlan:
    """How many records of each tier to keep, and how close that comes to the target mix."""

    available: list[int]
    keep: list[int]
    reached: bool
    # Percentage points by which the bands had to be widened to keep anything (0 when reached).
    widened_by: float
    message: str

    @property
    def total(self) -> int:
        return sum(self.keep)


def _feasible_keep(counts: Sequence[int], bands: Sequence[tuple[float, float]]) -> list[int] | None:
    """Largest selection ``k_t <= counts[t]`` whose shares all lie in ``bands``; None if only 0."""
    total = sum(counts)
    tol = 1e-9

    def continuous_ok(n: int) -> bool:
        if any(a * n > c + tol for (a, _), c in zip(bands, counts)):
            return False
        return n <= sum(min(c, b * n) for (_, b), c in zip(bands, counts)) + tol

    low, high = 0, total
    while low < high:  # feasibility of the continuous relaxation is monotone in n
        mid = (low + high + 1) // 2
        if continuous_ok(mid):
            low = mid
        else:
            high = mid - 1
    for n in range(low, 0, -1):  # integer rounding can make the very top infeasible
        lows = [math.ceil(a * n - tol) for a, _ in bands]
        highs = [min(c, math.floor(b * n + tol)) for (_, b), c in zip(bands, counts)]
        if all(lo <= hi for lo, hi in zip(lows, highs)) and sum(lows) <= n <= sum(highs):
            return _choose_within(n, lows, highs)
    return None


def _choose_within(n: int, lows: list[int], highs: list[int]) -> list[int]:
    """Counts within ``[lows, highs]`` summing to ``n``, as near the band middles as possible."""
    middles = [(tier.min_share + tier.max_share) / 2 for tier in TIERS]
    keep = [min(max(round(mid * n), lo), hi) for mid, lo, hi in zip(middles, lows, highs)]
    excess = sum(keep) - n
    by_surplus = sorted(range(len(keep)), key=lambda i: (middles[i] * n - keep[i], i))
    for i in by_surplus:  # most over their middle first
        if excess <= 0:
            break
        take = min(excess, keep[i] - lows[i])
        keep[i] -= take
        excess -= take
    for i in reversed(by_surplus):  # most under their middle first
        if excess >= 0:
            break
        give = min(-excess, highs[i] - keep[i])
        keep[i] += give
        excess += give
    return keep


def plan_balance(counts: Sequence[int], step: float = 0.005) -> BalancePlan:
    """Downsample over-represented tiers to the target mix, keeping as many records as possible.

    When no selection reaches the mix (a tier is empty or too small), the bands are widened
    in steps of ``step`` until one does; ``widened_by`` says how far that went, in
    percentage points, and the message names the tiers that limit the result.
    """
    counts = list(counts)
    if sum(counts) == 0:
        return BalancePlan(counts, [0] * len(counts), False, 0.0, "no records to balance")
    steps = int(round(1.0 / step))
    for i in range(steps + 1):
        widen = i * step
        bands = [(max(0.0, t.min_share - widen), min(1.0, t.max_share + widen)) for t in TIERS]
        keep = _feasible_keep(counts, bands)
        if keep is not None:
            break
    else:  # pragma: no cover - the widest bands accept every selection
        keep, widen = counts, 1.0
    reached = i == 0
    total = sum(keep)
    limiting = [TIERS[t].name for t in range(len(TIERS)) if keep[t] == counts[t] and counts[t] < sum(counts)]
    limits = f"; limited by the {', '.join(limiting)} tier{'s' if len(limiting) > 1 else ''}" if limiting else ""
    if reached:
        message = f"target mix reached with {total} of {sum(counts)} records{limits}"
    else:
        shares = ", ".join(
            f"{TIERS[t].name} {100 * keep[t] / total:.1f}% (target {100 * TIERS[t].min_share:.0f}-"
            f"{100 * TIERS[t].max_share:.0f}%)"
            for t in range(len(TIERS))
        )
        message = (
            f"target mix not reachable with this data: closest mix is {shares}, "
            f"up to {100 * widen:.1f} points outside the bands, keeping {total} of {sum(counts)} records{limits}"
        )
    return BalancePlan(counts, keep, reached, round(100 * widen, 3), message)


def no_balance(counts: Sequence[int]) -> BalancePlan:
    total = sum(counts)
    return BalancePlan(list(counts), list(counts), False, 0.0, f"balancing off: all {total} records kept")


# --------------------------------------------------------------------------- split


def split_sizes(
    available: int,
    train_size: int | None = None,
    val_size: int | None = None,
    val_fraction: float = 0.1,
) -> tuple[int, int]:
    """``(train, val)`` record counts from what is available and what was asked for.

    No sizes: ``val_fraction`` of the records go to val (at least one when there are two or
    more and the fraction is above 0). ``val_size`` only: the rest is train. ``train_size``
    only: val gets ``val_fraction`` of train + val. Both: exactly those. A request larger
    than what is available is scaled down in proportion.
    """
    if not 0.0 <= val_fraction < 1.0 or math.isnan(val_fraction):
        raise ValueError(f"val_fraction={val_fraction!r} is outside [0, 1)")
    for name, value in (("train_size", train_size), ("val_size", val_size)):
        if value is not None and value < 0:
            raise ValueError(f"{name}={value!r} must be >= 0")
    if train_size is None and val_size is None:
        val = round(val_fraction * available)
        if val_fraction > 0 and available >= 2:
            val = min(max(val, 1), available - 1)
        return available - val, val
    if train_size is None:
        val = min(val_size, available)
        return available - val, val
    if val_size is None:
        wanted_total = train_size / (1.0 - val_fraction)
        if wanted_total <= available:
            return train_size, min(round(wanted_total * val_fraction), available - train_size)
        val = round(val_fraction * available)
        return available - val, val
    if train_size + val_size <= available:
        return train_size, val_size
    val = round(val_size * available / (train_size + val_size))
    return available - val, val


def apportion(total: int, weights: Sequence[int], caps: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders), within ``caps``."""
    weight_sum = sum(weights)
    quotas = [total * w / weight_sum if weight_sum else 0.0 for w in weights]
    alloc = [min(int(q), c) for q, c in zip(quotas, caps)]
    left = total - sum(alloc)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - int(quotas[i])), i))
    for i in order:
        if left and alloc[i] < caps[i]:
            alloc[i] += 1
            left -= 1
    for i in order:
        take = min(left, caps[i] - alloc[i])
        alloc[i] += take
        left -= take
    return alloc

"""The statistics of a variant's rounds: the median with a distribution-free interval, and percentiles.

Nothing here assumes a distribution: timings on a shared machine are skewed and heavy-tailed, so the median's
interval comes from order statistics, and the tail of the inter-token latency from the pooled steps.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["half_width_pct", "median_interval", "percentile"]


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(median, lo, hi)``: the median with a distribution-free interval from order statistics.

    ``[x_(l), x_(n-l+1)]`` with the largest ``l`` whose binomial tail ``P(Bin(n, 1/2) < l)`` is at most
    ``(1 - confidence) / 2``; below 6 values no such ``l`` exists and the interval is the whole range
    (93.75% at 5). NaN for no values.
    """
    xs = sorted(v for v in values if v == v)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    tail, below, lower = (1.0 - confidence) / 2.0, 0.0, 1
    for k in range(n):  # below = P(X <= k)
        below += math.comb(n, k) / 2.0**n
        if below > tail:
            lower = max(1, k)  # P(X < k) <= tail: order statistic k (1-based) is the lower end
            break
    return float(statistics.median(xs)), xs[lower - 1], xs[n - lower]


def half_width_pct(values: Sequence[float]) -> float:
    """Half the width of the median's 95% interval, in percent of the median (inf below 2 values)."""
    med, lo, hi = median_interval(values)
    return 100.0 * (hi - lo) / (2.0 * med) if len(values) >= 2 and med > 0 else math.inf


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks (numpy's default, ``method="linear"``)."""
    if not values or not 0 <= q <= 100:
        raise ValueError("percentile needs values and 0 <= q <= 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)

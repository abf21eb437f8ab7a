"""The A/B ratio estimator: paired log-ratios, trimmed mean, bootstrap SE, t quantile (see ``ab/__init__``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
Stat = Literal["trimmed", "median"]

TRIM = 0.2  # fraction trimmed from each end by stat="trimmed"
_NORMAL = NormalDist()


# --------------------------------------------------------------------------------------------- input checks
def _as_samples(values: ArrayLike, name: str) -> FloatArray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: timings must be numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a flat sequence of timings, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: no timings")
    bad = ~(np.isfinite(arr) & (arr > 0.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {float(arr[i])!r}: timings must be finite and > 0")
    return arr


def _check_unit(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def _pair_up(a: ArrayLike, b: ArrayLike, paired: bool) -> tuple[FloatArray, FloatArray]:
    aa, bb = _as_samples(a, "a"), _as_samples(b, "b")
    if paired and aa.size != bb.size:
        raise ValueError(f"paired samples need equal lengths, got {aa.size} A and {bb.size} B timings")
    return aa, bb


# ------------------------------------------------------------------------------------------------ estimator
def _positions(n: int, stat: Stat) -> NDArray[np.intp]:
    """Order-statistic positions (0-based) averaged by the location statistic."""
    if stat == "median":
        return np.unique(np.array([(n - 1) // 2, n // 2], dtype=np.intp))
    g = int(TRIM * n)
    return np.arange(g, n - g, dtype=np.intp)


def _df(n: int, stat: Stat) -> int:
    return max(1, (n if stat == "median" else _positions(n, stat).size) - 1)


def _location(sorted_x: FloatArray, stat: Stat) -> float:
    return float(np.mean(sorted_x[_positions(sorted_x.size, stat)]))


@lru_cache(maxsize=48)
def _boot_matrix(n: int, resamples: int, seed: int, stream: int, stat: Stat) -> FloatArray:
    """W with ``W @ sorted(x)`` = the statistic of each bootstrap resample of x.

    Resample r of the *sorted* sample xs is ``xs[idx[r]]`` with
    ``idx = default_rng([seed, stream]).integers(0, n, (resamples, n))`` (resampling positions of xs is
    the ordinary bootstrap).  As xs is sorted, the k-th smallest value of a resample is
    ``xs[sorted(idx[r])[k]]``, so any L-statistic (median, trimmed mean) of every resample is a fixed
    linear combination of xs that depends only on (n, seed, stat): computed once, then one mat-vec.
    """
    rng = np.random.default_rng([seed, stream])
    idx = np.sort(rng.integers(0, n, size=(resamples, n)), axis=1)
    pos = _positions(n, stat)
    flat = (np.arange(resamples)[:, None] * n + idx[:, pos]).ravel()
    w = np.bincount(flat, minlength=resamples * n).astype(np.float64).reshape(resamples, n) / pos.size
    w.setflags(write=False)
    return w


@dataclass(frozen=True)
class _LogEstimate:
    theta: float  # log(B/A)
    se: float  # bootstrap standard error of theta
    df: int
    n_pairs: int


def _log_estimate(a: FloatArray, b: FloatArray, paired: bool, stat: Stat, resamples: int, seed: int) -> _LogEstimate:
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    if paired:
        d = np.sort(np.log(b) - np.log(a))
        n = d.size
        if n < 2:
            raise ValueError(f"need at least 2 pairs for an interval, got {n}")
        boot = _boot_matrix(n, resamples, seed, 0, stat) @ d
        return _LogEstimate(_location(d, stat), float(np.std(boot, ddof=1)), _df(n, stat), n)
    la, lb = np.sort(np.log(a)), np.sort(np.log(b))
    if min(la.size, lb.size) < 2:
        raise ValueError(f"need at least 2 timings per side for an interval, got {la.size} A and {lb.size} B")
    boot = _boot_matrix(lb.size, resamples, seed, 2, stat) @ lb - _boot_matrix(la.size, resamples, seed, 1, stat) @ la
    theta = _location(lb, stat) - _location(la, stat)
    df = min(_df(la.size, stat), _df(lb.size, stat))
    return _LogEstimate(theta, float(np.std(boot, ddof=1)), df, min(la.size, lb.size))


# ---------------------------------------------------------------------------------- Student t upper quantile
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_sf(x: float, df: int) -> float:
    """P(T > x) for x >= 0."""
    return 0.5 * _betainc(df / 2.0, 0.5, df / (df + x * x))


@lru_cache(maxsize=4096)
def _t_isf(p: float, df: int) -> float:
    """x with P(T_df > x) = p, for 0 < p < 0.5."""
    if df > 100_000:
        return _NORMAL.inv_cdf(1.0 - p)
    lo, hi = 0.0, 1.0
    while _t_sf(hi, df) > p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_sf(mid, df) > p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return hi


# ------------------------------------------------------------------------- group-sequential (Lan-DeMets) RCIs

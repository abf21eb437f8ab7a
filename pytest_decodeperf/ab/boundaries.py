"""Group-sequential boundaries: Lan-DeMets alpha spending over the looks actually taken (see ``ab/__init__``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .estimate import _NORMAL, FloatArray

_ERFC_COEFS = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196,
               1.00002368, -1.26551223)  # fmt: skip


def _norm_sf(x: FloatArray) -> FloatArray:
    """Vectorised P(Z > x); erfc by Numerical Recipes' Chebyshev fit (relative error < 1.2e-7)."""
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(t)
    for coef in _ERFC_COEFS:
        poly = poly * t + coef
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0.0, 0.5 * erfc, 1.0 - 0.5 * erfc)


@dataclass(frozen=True)
class _GSState:
    """Sub-density of B(tau) = Z*sqrt(tau) on the continuation region after the looks so far."""

    tau: float
    spent: float
    crit: float  # two-sided critical |Z| of the latest look (inf: nothing spent there)
    grid: FloatArray
    dens: FloatArray


_GS_START = _GSState(0.0, 0.0, math.inf, np.zeros(1), np.ones(1))
_GS_CACHE: dict[tuple[float, float, tuple[float, ...]], _GSState] = {}


def _gs_step(prev: _GSState, tau: float, alpha: float, rho: float) -> _GSState:
    spent = alpha * tau**rho
    inc = spent - prev.spent
    if tau <= prev.tau or inc <= 0.0:
        return _GSState(prev.tau, prev.spent, math.inf, prev.grid, prev.dens)
    root = math.sqrt(tau)
    if prev.tau == 0.0:  # first look: Z is N(0, 1)
        crit = _NORMAL.inv_cdf(1.0 - inc / 2.0)
        sd, u, w = math.sqrt(tau), np.zeros(1), np.ones(1)
    else:
        sd = math.sqrt(tau - prev.tau)
        u = prev.grid
        w = prev.dens * (u[1] - u[0])
        w[0] *= 0.5
        w[-1] *= 0.5

        def crossing(c: float) -> float:
            return float(w @ (_norm_sf((c * root - u) / sd) + _norm_sf((c * root + u) / sd)))

        lo, hi = 0.0, 40.0
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if crossing(mid) > inc else (lo, mid)
        crit = hi
    bound = crit * root
    size = int(min(2001, max(401, math.ceil(2.0 * bound / (sd / 8.0)))))
    grid = np.linspace(-bound, bound, size | 1)
    kernel = np.exp(-0.5 * ((grid[:, None] - u[None, :]) / sd) ** 2) / (sd * math.sqrt(2.0 * math.pi))
    return _GSState(tau, spent, crit, grid, kernel @ w)


def _gs_critical(alpha: float, rho: float, taus: tuple[float, ...]) -> float:
    """Two-sided critical |Z| at the last of the looks ``taus`` (information fractions, increasing)."""
    if len(_GS_CACHE) > 20_000:
        _GS_CACHE.clear()
    k = len(taus)
    while k > 0 and (alpha, rho, taus[:k]) not in _GS_CACHE:
        k -= 1
    state = _GS_CACHE[(alpha, rho, taus[:k])] if k else _GS_START
    for j in range(k, len(taus)):
        state = _gs_step(state, taus[j], alpha, rho)
        _GS_CACHE[(alpha, rho, taus[: j + 1])] = state
    return state.crit


# --------------------------------------------------------------------------------------------- public API

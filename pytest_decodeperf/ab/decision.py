"""The A/B verdict: DIFFERENT (worse or better), SAME, or UNKNOWN, one look or sequential (see ``ab/__init__``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
from numpy.typing import ArrayLike

from .boundaries import _gs_critical, _norm_sf
from .estimate import (
    FloatArray,
    Stat,
    _check_unit,
    _log_estimate,
    _LogEstimate,
    _pair_up,
    _t_isf,
)

__all__ = ["Decision", "SequentialAB", "Stat", "Verdict", "decide", "ratio_ci"]


class Decision(str, Enum):
    DIFFERENT_WORSE = "different_worse"
    DIFFERENT_BETTER = "different_better"
    SAME = "same"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    """Outcome of one look.  ``ratio``/``lo``/``hi`` are B/A (lower is better: > 1 means B is slower)."""

    decision: Decision
    ratio: float
    lo: float
    hi: float
    n_pairs: int
    threshold: float
    confidence: float = 0.99
    note: str = ""  # why the decision is UNKNOWN (or extra context)
    processes: int = 0  # process pairs the pairs came from (0: one process pair, ``SequentialAB``)

    @property
    def failed(self) -> bool:
        """True only for a significant, material slowdown; UNKNOWN never fails."""
        return self.decision is Decision.DIFFERENT_WORSE

    def message(self) -> str:
        """One line, e.g. ``worse x1.052 (99% CI 1.031-1.074, 40 pairs)``."""
        word = {Decision.DIFFERENT_WORSE: "worse", Decision.DIFFERENT_BETTER: "better"}.get(
            self.decision, self.decision.value
        )
        if math.isnan(self.lo):
            return f"{word}: {self.note}" if self.note else word
        if self.note.startswith("not judged"):
            return f"{self.note} (x{self.ratio:.3f}, {self.confidence * 100:g}% CI {self.lo:.3f}-{self.hi:.3f})"
        extra = f"; {self.note}" if self.note else ""
        where = f"{self.processes} process pairs, " if self.processes else ""
        return (
            f"{word} x{self.ratio:.3f} ({self.confidence * 100:g}% CI {self.lo:.3f}-{self.hi:.3f}, "
            f"{where}{self.n_pairs} pairs{extra})"
        )


def ratio_ci(
    a: ArrayLike,
    b: ArrayLike,
    confidence: float = 0.99,
    resamples: int = 2000,
    seed: int = 0,
    *,
    paired: bool = True,
    stat: Stat = "trimmed",
) -> tuple[float, float, float]:
    """Bootstrap confidence interval of B/A: ``(ratio, lo, hi)``.

    ``paired=True`` (default): ``ratio = exp(T(log(b_i/a_i)))`` over pairs; drift common to both sides of
    a pair cancels.  ``paired=False``: ``ratio = exp(T(log b) - T(log a))``, A and B resampled
    independently (with ``stat="median"``, the ratio of medians; even n uses the geometric mid of the two
    middle values).  T is the 20%-trimmed mean (``stat="trimmed"``) or the median.  The interval is
    ``exp(theta +- q*se)`` with the bootstrap SE and the Student-t quantile q; see the module docstring
    for why each choice.  Deterministic for a given seed.
    """
    _check_unit(confidence, "confidence")
    aa, bb = _pair_up(a, b, paired)
    est = _log_estimate(aa, bb, paired, stat, resamples, seed)
    q = _t_isf((1.0 - confidence) / 2.0, est.df)
    return math.exp(est.theta), math.exp(est.theta - q * est.se), math.exp(est.theta + q * est.se)


def _classify(theta: float, lo: float, hi: float, threshold: float, magnitude: float) -> tuple[Decision, str]:
    """Apply the decision rule to a log-space estimate and interval (see the module docstring)."""
    g = math.log1p(threshold)
    small = f"significant but smaller than x{math.exp(magnitude * g):.3f}"
    if -g < lo and hi < g:
        return Decision.SAME, f"within ±{threshold * 100:g}%"
    if lo > 0.0:
        return (Decision.DIFFERENT_WORSE, "") if theta >= magnitude * g else (Decision.UNKNOWN, small)
    if hi < 0.0:
        return (Decision.DIFFERENT_BETTER, "") if theta <= -magnitude * g else (Decision.UNKNOWN, small)
    return Decision.UNKNOWN, "inconclusive"


def _verdict(
    est: _LogEstimate, tail: float, threshold: float, confidence: float, magnitude: float, final: bool
) -> Verdict:
    q = _t_isf(tail, est.df) if tail > 0.0 else math.inf
    lo, hi = est.theta - q * est.se, est.theta + q * est.se
    decision, note = _classify(est.theta, lo, hi, threshold, magnitude)
    if decision is Decision.UNKNOWN:
        note = f"{note}, pair budget spent" if final else f"{note}, need more pairs"
    return Verdict(decision, math.exp(est.theta), math.exp(lo), math.exp(hi), est.n_pairs, threshold, confidence, note)


def _too_few(
    a: FloatArray, b: FloatArray, paired: bool, threshold: float, confidence: float, min_pairs: int
) -> Verdict:
    n = min(a.size, b.size)
    if paired:
        ratio = math.exp(float(np.median(np.log(b) - np.log(a))))
    else:
        ratio = math.exp(float(np.median(np.log(b)) - np.median(np.log(a))))
    note = f"only {n} pair{'s' * (n != 1)}, need at least {min_pairs} to decide"
    return Verdict(Decision.UNKNOWN, ratio, math.nan, math.nan, n, threshold, confidence, note)


def _check_rule(threshold: float, magnitude: float, min_pairs: int) -> None:
    if not (math.isfinite(threshold) and threshold > 0.0):  # 1.0 is a 100% gate: B twice as slow
        raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
    if not 0.0 < magnitude <= 1.0:
        raise ValueError(f"magnitude must be in (0, 1], got {magnitude!r}")
    if min_pairs < 3:
        raise ValueError(f"min_pairs must be >= 3, got {min_pairs}")


def decide(
    a: ArrayLike,
    b: ArrayLike,
    threshold: float = 0.05,
    confidence: float = 0.99,
    final: bool = False,
    *,
    min_pairs: int = 10,
    magnitude: float = 0.75,
    paired: bool = True,
    stat: Stat = "trimmed",
    resamples: int = 2000,
    seed: int = 0,
) -> Verdict:
    """One-look decision for a lower-is-better metric (a = reference A, b = candidate B).

    Rule, with the ``confidence`` interval ``[lo, hi]`` of B/A from :func:`ratio_ci`:
    SAME if the interval lies inside ``(1/(1+threshold), 1+threshold)``; else DIFFERENT_WORSE if
    ``lo > 1`` and ``ratio >= (1+threshold)**magnitude``; else DIFFERENT_BETTER if ``hi < 1`` and
    ``ratio <= (1+threshold)**-magnitude``; else UNKNOWN.  Fewer than ``min_pairs`` pairs: UNKNOWN.
    ``final`` only changes the UNKNOWN note (budget spent).  Error rates (module docstring): a no-change
    A/B is WORSE with probability <= (1-confidence)/2; a true slowdown >= threshold is SAME with probability
    <= (1-confidence)/2.  For repeated looks at a growing sample use :class:`SequentialAB`, not this.
    """
    _check_unit(confidence, "confidence")
    _check_rule(threshold, magnitude, min_pairs)
    aa, bb = _pair_up(a, b, paired)
    if min(aa.size, bb.size) < min_pairs:
        return _too_few(aa, bb, paired, threshold, confidence, min_pairs)
    est = _log_estimate(aa, bb, paired, stat, resamples, seed)
    return _verdict(est, (1.0 - confidence) / 2.0, threshold, confidence, magnitude, final)


class SequentialAB:
    """Sequential A/B gate: ``add()`` blocks of pairs, ``verdict()`` after each, stop when ``done``.

    Every ``verdict()`` at a new pair count >= ``min_pairs`` is a look; its interval is a repeated
    confidence interval from Lan-DeMets spending ``alpha * (n/max_pairs)**rho`` (alpha = 1 - confidence),
    so the ``confidence`` holds simultaneously over all looks: a no-change A/B ends WORSE with
    probability <= alpha/2 however many blocks are looked at.  ``done`` once the decision is not UNKNOWN or
    ``max_pairs`` pairs are in (then the last verdict is final and may stay UNKNOWN, which never fails).
    """

    def __init__(
        self,
        threshold: float = 0.05,
        confidence: float = 0.99,
        max_pairs: int = 200,
        min_pairs: int = 10,
        *,
        magnitude: float = 0.75,
        rho: float = 3.0,
        paired: bool = True,
        stat: Stat = "trimmed",
        resamples: int = 2000,
        seed: int = 0,
    ) -> None:
        _check_unit(confidence, "confidence")
        _check_rule(threshold, magnitude, min_pairs)
        if max_pairs < min_pairs:
            raise ValueError(f"max_pairs ({max_pairs}) must be >= min_pairs ({min_pairs})")
        if rho <= 0.0:
            raise ValueError(f"rho must be > 0, got {rho!r}")
        if resamples < 100:
            raise ValueError(f"resamples must be >= 100, got {resamples}")
        self.threshold, self.confidence, self.max_pairs, self.min_pairs = threshold, confidence, max_pairs, min_pairs
        self.magnitude, self.rho, self.paired, self.stat = magnitude, rho, paired, stat
        self.resamples, self.seed = resamples, seed
        self._a: list[float] = []
        self._b: list[float] = []
        self._taus: list[float] = []
        self._last: Verdict | None = None

    @property
    def n_pairs(self) -> int:
        return min(len(self._a), len(self._b))

    @property
    def looks(self) -> int:
        """Number of looks taken (verdicts at distinct pair counts >= min_pairs)."""
        return len(self._taus)

    def add(self, a_values: ArrayLike, b_values: ArrayLike) -> None:
        """Append one block of pairs (equal numbers of A and B timings; values checked before anything is kept)."""
        if self.done:
            raise RuntimeError(f"session already done: {self.verdict().message()}")
        aa, bb = _pair_up(a_values, b_values, paired=True)
        self._a.extend(aa.tolist())
        self._b.extend(bb.tolist())

    def verdict(self) -> Verdict:
        """Decision at the current pair count; a new count >= min_pairs is a look (cached until more pairs)."""
        n = self.n_pairs
        if self._last is not None and self._last.n_pairs == n:
            return self._last
        if n == 0:
            note = f"no pairs yet, need at least {self.min_pairs} to decide"
            return Verdict(Decision.UNKNOWN, math.nan, math.nan, math.nan, 0, self.threshold, self.confidence, note)
        if n < self.min_pairs:
            a, b = np.asarray(self._a), np.asarray(self._b)
            self._last = _too_few(a, b, self.paired, self.threshold, self.confidence, self.min_pairs)
            return self._last
        self._taus.append(min(n / self.max_pairs, 1.0))
        crit = _gs_critical(1.0 - self.confidence, self.rho, tuple(self._taus))
        tail = float(_norm_sf(np.array([crit]))[0]) if math.isfinite(crit) else 0.0
        est = _log_estimate(np.asarray(self._a), np.asarray(self._b), self.paired, self.stat, self.resamples, self.seed)
        final = n >= self.max_pairs
        self._last = _verdict(est, tail, self.threshold, self.confidence, self.magnitude, final)
        return self._last

    @property
    def done(self) -> bool:
        return self.verdict().decision is not Decision.UNKNOWN or self.n_pairs >= self.max_pairs

"""The A/B gate over worker processes: each process pair is one observation of B/A (see ``ab/__init__``).

Two processes running identical code differ by a few percent for their whole life (memory layout,
allocator state, hash seed, the core their threads land on; Mytkowicz et al., ASPLOS 2009). Pairs of
rounds inside one process pair are many samples of *that* pair's bias, not independent evidence about
the code: a test that treats them as independent calls a 4% process bias a regression. So the unit is
the process pair. Each one gives one estimate, the trimmed mean of its rounds' log-ratios; the verdict
is a Student-t interval over those estimates (``k - 1`` degrees of freedom), the summary-statistics
analysis of clustered data. Whatever the process-level variance is, it is in the spread of the
estimates: a few percent of bias widens the interval instead of becoming a verdict.

Sequential looks, one after each process pair, use the repeated confidence intervals of
``decision.py`` (Lan-DeMets spending over the information fraction ``k / max_processes``), with the
Student-t quantile at each look's tail probability. ``rho = 2`` rather than 3 as within a process:
there are at most ~10 looks and the first ones are held back by their few degrees of freedom anyway.
Chosen by simulation (``tests/test_ab_processes.py``; 10 process pairs of 20 round pairs, process
bias SD 1-2% as measured on the 2-core VM): A/A SAME in 98-100% of runs after 5-7 process pairs on
average, never WORSE; +5% WORSE in 98-100%; +2% WORSE in 1-7%. A metric whose spread is too large to
ever be shown within the gate in the process budget, and whose estimate so far shows no material
change, is *hopeless*: the controller stops paying for it and says so. One whose estimate is beyond
``magnitude`` of the gate keeps being sampled: more process pairs may show it worse.

How many round pairs one process pair gets follows its noise (:func:`pinned`): at least
``MIN_ROUNDS``, then the controller stops as soon as that pair's own ratio is pinned (its 95% interval
within a third of the gate) or the round budget is spent. The rule reads only the *spread* of the
pair's log-ratios, never their level, so it cannot stop a pair because its ratio looks good or bad:
under no change each estimate stays symmetric about 0 whatever the stopping time, and the process
pairs' estimates stay independent, so the false-alarm bound above is untouched. What it changes is
each estimate's within-pair noise, now about the same in every pair (a quiet pair stops early, a noisy
one runs to the budget) and small beside the process-level spread, which rounds cannot reduce anyway.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from numpy.typing import ArrayLike

from .boundaries import _gs_critical, _norm_sf
from .decision import Decision, Verdict, _check_rule, _verdict
from .estimate import TRIM, Stat, _check_unit, _location, _LogEstimate, _pair_up, _t_isf

MIN_PROCESSES = 3  # two estimates give one degree of freedom: an interval too wide to decide anything
MIN_ROUNDS = 5  # round pairs a process pair gets before it may stop as pinned (its trimmed mean keeps 3)
PIN_SHARE = 1.0 / 3.0  # pinned: the pair's 95% interval of B/A lies within +-this share of the gate


def pinned(a_values: ArrayLike, b_values: ArrayLike, threshold: float, share: float = PIN_SHARE) -> bool:
    """True when one process pair's ratio B/A is pinned: at least ``MIN_ROUNDS`` round pairs, and the 95%
    interval of their trimmed mean log-ratio (Tukey-McLaughlin: winsorized SD, Student t with h - 1 degrees
    of freedom, h the values kept) no wider than ``share`` of the gate ``log(1 + threshold)`` either way.

    Location-free on purpose: shifting every log-ratio by a constant, or flipping their signs, gives the same
    answer, so when a pair stops says nothing about where its estimate lies (see the module docstring).
    """
    a, b = _pair_up(a_values, b_values, paired=True)
    d = np.sort(np.log(b) - np.log(a))
    n = d.size
    if n < MIN_ROUNDS:
        return False
    g = int(TRIM * n)
    h = n - 2 * g
    w = np.clip(d, d[g], d[n - 1 - g])
    se = math.sqrt(float(np.sum((w - np.mean(w)) ** 2)) / (h * (h - 1)))
    return _t_isf(0.025, h - 1) * se <= share * math.log1p(threshold)


class ClusteredAB:
    """Sequential gate whose observations are process pairs: ``add()`` one pair's rounds, ``verdict()`` after.

    ``add(a, b)`` takes the paired timings of one process pair (A's and B's rounds, in pair order). Its
    estimate is ``T(log b_i - log a_i)`` (T: 20%-trimmed mean, or the median). ``verdict()`` at ``k >=
    min_processes`` pairs is a look: ``theta = mean(estimates)``, ``se = sd(estimates) / sqrt(k)``, the
    interval ``theta +- t_{k-1}(tail) * se`` with the tail of a Lan-DeMets repeated confidence interval,
    classified by ``decision._classify`` (SAME within the gate; WORSE significant and at least ``magnitude``
    of the gate; BETTER likewise; else UNKNOWN). A no-change A/B ends WORSE with probability <=
    (1 - confidence)/2 over all looks, under any process-level variance, up to the normality of the
    process pairs' estimates.
    """

    def __init__(
        self,
        threshold: float = 0.05,
        confidence: float = 0.99,
        max_processes: int = 10,
        min_processes: int = MIN_PROCESSES,
        *,
        magnitude: float = 0.75,
        rho: float = 2.0,
        stat: Stat = "trimmed",
    ) -> None:
        _check_unit(confidence, "confidence")
        _check_rule(threshold, magnitude, 3)
        if min_processes < MIN_PROCESSES:
            raise ValueError(f"min_processes must be >= {MIN_PROCESSES}, got {min_processes}")
        if max_processes < min_processes:
            raise ValueError(f"max_processes ({max_processes}) must be >= min_processes ({min_processes})")
        if rho <= 0.0:
            raise ValueError(f"rho must be > 0, got {rho!r}")
        self.threshold, self.confidence, self.magnitude, self.rho, self.stat = (
            threshold,
            confidence,
            magnitude,
            rho,
            stat,
        )
        self.max_processes, self.min_processes = max_processes, min_processes
        self.estimates: list[float] = []
        self.pairs: list[int] = []
        self._taus: list[float] = []
        self._last: Verdict | None = None

    @property
    def n_processes(self) -> int:
        return len(self.estimates)

    @property
    def n_pairs(self) -> int:
        return sum(self.pairs)

    def add(self, a_values: ArrayLike, b_values: ArrayLike) -> None:
        """One process pair's rounds: equal numbers of A and B timings (checked before anything is kept)."""
        if self.done:
            raise RuntimeError(f"gate already done: {self.verdict().message()}")
        a, b = _pair_up(a_values, b_values, paired=True)
        d = np.sort(np.log(b) - np.log(a))
        self.estimates.append(_location(d, self.stat) if d.size >= 3 else float(np.mean(d)))
        self.pairs.append(int(d.size))

    def spread(self) -> float | None:
        """Standard deviation of the process pairs' log estimates (None below two)."""
        return float(np.std(self.estimates, ddof=1)) if len(self.estimates) >= 2 else None

    def _estimate(self) -> _LogEstimate:
        k = len(self.estimates)
        sd = self.spread() or 0.0
        return _LogEstimate(float(np.mean(self.estimates)), sd / math.sqrt(k), k - 1, self.n_pairs)

    def verdict(self) -> Verdict:
        """Decision after the process pairs so far; a new count >= min_processes is a look (cached)."""
        k = self.n_processes
        if self._last is not None and self._last.processes == k:
            return self._last
        if k < self.min_processes:
            ratio = math.exp(float(np.mean(self.estimates))) if k else math.nan
            note = f"{k} process pair{'s' * (k != 1)}, need at least {self.min_processes} to decide"
            verdict = Verdict(
                Decision.UNKNOWN, ratio, math.nan, math.nan, self.n_pairs, self.threshold, self.confidence, note
            )
            self._last = replace(verdict, processes=k)
            return self._last
        self._taus.append(min(k / self.max_processes, 1.0))
        tail = self._tail(tuple(self._taus))
        final = k >= self.max_processes
        verdict = _verdict(self._estimate(), tail, self.threshold, self.confidence, self.magnitude, final)
        verdict = replace(verdict, note=verdict.note.replace("need more pairs", "need more process pairs"))
        if verdict.decision is Decision.UNKNOWN and self.hopeless():
            verdict = replace(verdict, note=self.hopeless_note())
        self._last = replace(verdict, processes=k)
        return self._last

    def _tail(self, taus: tuple[float, ...]) -> float:
        crit = _gs_critical(1.0 - self.confidence, self.rho, taus)
        return float(_norm_sf(np.array([crit]))[0]) if math.isfinite(crit) else 0.0

    @property
    def done(self) -> bool:
        return self.verdict().decision is not Decision.UNKNOWN or self.n_processes >= self.max_processes

    def projected_half_width(self) -> float | None:
        """The interval's half-width (log) at the budget's last process pair, at today's spread (None: too few).

        Optimistic on purpose: the looks still to come are skipped (they would spend some of the error
        rate), so a metric is only called hopeless when even that interval is wider than the gate.
        """
        sd = self.spread()
        if sd is None or self.n_processes < self.min_processes:
            return None
        taus = tuple(self._taus) if self._taus and self._taus[-1] >= 1.0 else (*self._taus, 1.0)
        q = _t_isf(max(self._tail(taus), 1e-300), self.max_processes - 1)
        return q * sd / math.sqrt(self.max_processes)

    def hopeless(self) -> bool:
        """True when SAME is out of reach within the process budget (the metric's noise is larger than the
        gate) *and* the estimate so far is no material change: a metric whose estimate is already beyond
        ``magnitude`` of the gate is never given up on, since more process pairs may show it is worse."""
        width = self.projected_half_width()
        g = math.log1p(self.threshold)
        return width is not None and width >= g and abs(float(np.mean(self.estimates))) < self.magnitude * g

    def hopeless_note(self) -> str:
        sd = self.spread() or 0.0
        return (
            f"not judged: it varies ±{100 * math.expm1(sd):.1f}% between process pairs, too much to show it within "
            f"±{100 * self.threshold:g}% in {self.max_processes} process pairs"
        )

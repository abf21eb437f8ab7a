"""Statistics for a same-session A/B speed gate (Pinpoint-style), lower-is-better metrics.

What ``--decodeperf-ab`` runs is :class:`ClusteredAB` (``clustered.py``): the rounds come from several
process pairs (fresh workers each), and each process pair is one observation, because two processes
running identical code differ by a few percent for their whole life; its interval is a Student-t one
over the process pairs' estimates.  Below, the within-process machinery it builds on: one process
pair's estimate (the paired, trimmed log-ratio), the decision rule and the sequential boundaries.
:class:`SequentialAB` treats the pairs of *one* process pair as independent: right for rounds of one
process (the in-process tests and simulations), wrong as a verdict on code (see ``clustered.py``).

A (reference) and B (candidate) are timed in interleaved rounds in one session, giving pairs
``(a_i, b_i)``.  After each block of pairs we decide, per metric, one of

* ``DIFFERENT_WORSE``  - B is significantly slower, by a material amount (the only outcome that fails),
* ``DIFFERENT_BETTER`` - B is significantly faster, by a material amount,
* ``SAME``             - the confidence interval of B/A lies inside ``[1/(1+t), 1+t]`` (t = threshold),
* ``UNKNOWN``          - not conclusive yet; when the pair budget runs out it stays UNKNOWN (never fails).

Estimator (see :func:`ratio_ci`)
    Work in log space.  The default is *paired*: the per-pair log-ratios ``d_i = log(b_i/a_i)`` are
    summarised by a 20%-trimmed mean (``stat="trimmed"``) and ``ratio = exp(T(d))``.  A and B of a pair run
    back to back, so machine speed drift (thermal, turbo, noisy neighbours) multiplies both sides of a
    pair alike and cancels in ``d_i``.  The unpaired ratio ``exp(T(log b) - T(log a))`` (with
    ``stat="median"``: the ratio of medians) has the same variance as the paired one without drift
    (``2*sigma^2/n`` either way), but under drift the spread of machine speed enters both sides and the
    iid bootstrap counts it as noise.  With ABBA pairs the drift is balanced between A and B, so this costs
    no false alarms (the interval over-covers) but it blinds the gate: in the simulations (sigma 0.03-0.10,
    a +-20% speed step), the unpaired gate catches 84% of 5% slowdowns vs 96% paired, reaches SAME on
    A/A in 72% vs 98% of sessions, and needs ~170 vs ~100 pairs.  So the paired estimator is the default.
    The 20%-trimmed mean rather than the median: it is as robust to the 1.5x spikes we see (they hit
    ~10% of pairs, half on each side, and are trimmed away) but needs ~27% fewer pairs under Gaussian
    noise (efficiency 0.87 vs 0.64): at sigma=0.10 it detects 89% of 5% slowdowns within 200 pairs where
    the median detects ~76%, and its small-n false-alarm rate is lower.  ``stat="median"`` is kept.

Interval
    Bootstrap standard error (``resamples`` resamples, indices from ``numpy.random.default_rng([seed,
    stream])``, so fully deterministic) and a Student-t critical value with ``h-1`` degrees of freedom
    (h = number of values the trimmed mean keeps; Tukey-McLaughlin) in log space:
    ``theta +- q * se``.  This *normal-type* bootstrap interval rather than the percentile interval,
    because the sequential gate needs per-look tails around 1e-4, which a percentile bootstrap cannot
    resolve with 2000 resamples; the t quantile repairs the small-n undercoverage of a bootstrap SE.

Decision rule (see :func:`decide`), with ``g = log(1+t)``, ``[lo, hi]`` the interval of log B/A:
    1. ``SAME``    if ``-g < lo`` and ``hi < g`` (shown to be within the gate; checked first);
    2. ``WORSE``   if ``lo > 0`` (significantly slower) and ``theta >= magnitude * g``;
    3. ``BETTER``  if ``hi < 0`` and ``theta <= -magnitude * g``;
    4. otherwise ``UNKNOWN`` (keep sampling).
    Why not ``lo > 1+t``: a true slowdown of exactly t would then be caught only ~50% of the time.  Why not
    significance alone (Pinpoint's "different"): with enough pairs any 1% slowdown becomes significant and
    would fail a 5% gate.  So significance controls false alarms (a no-change A/B fails with probability
    <= (1-confidence)/2, whatever the magnitude rule), and the magnitude condition on the point estimate
    places the fail/pass boundary inside the indifference zone ``[t/2, t]``: slowdowns up to t/2 are
    tolerated, slowdowns >= t must fail, and ``magnitude=0.75`` is the middle of that zone, which balances
    the two errors at its ends once the estimate is precise.  ``magnitude=0.5`` (the middle of [0, t])
    fails a true 2% slowdown at a 5% gate in 20-30% of sessions at sigma 0.03-0.06; 0.75 brings that to
    2% / 9% (13% at sigma=0.10, where significance, not magnitude, is the binding condition) for ~2.5
    points of 5%-detection at sigma=0.10.  At sigma=0.10, 200 pairs cannot separate 2% from 5% well under
    any rule (the estimate's SD is ~0.011 against a 0.029 gap); 300 pairs gives 94% detection there.
    SAME-before-WORSE means a slowdown proven to be below the threshold never fails; a true slowdown >= t
    is called SAME with probability <= (1-confidence)/2.

Sequential looks (see :class:`SequentialAB`)
    Looking after every block inflates the false-alarm rate.  The per-look intervals are *repeated
    confidence intervals* (Jennison & Turnbull 1989): two-sided group-sequential boundaries with the
    Lan-DeMets power spending function ``alpha * tau**rho`` (alpha = 1 - confidence, tau = n/max_pairs,
    rho = 3, close to O'Brien-Fleming: strict early, ~2.8 sigma at the last of 20 looks instead of
    Bonferroni's 3.5), computed exactly for the looks actually taken by numerical integration of the
    Brownian-motion approximation.  Their simultaneous coverage over all looks is >= confidence whatever the
    stopping rule (up to the normal approximation, which the t quantile makes conservative at small n;
    checked by simulation), so P(ever WORSE | no change) <= (1-confidence)/2 and P(ever SAME | slowdown
    >= t) <= (1-confidence)/2.  Looks need not be evenly spaced; skipped looks spend nothing.  The
    message's "99% CI" is that simultaneous level; the per-look interval is wider than a one-off 99% one.
"""

from .clustered import ClusteredAB
from .decision import Decision, SequentialAB, Stat, Verdict, decide, ratio_ci

__all__ = ["ClusteredAB", "Decision", "SequentialAB", "Stat", "Verdict", "decide", "ratio_ci"]

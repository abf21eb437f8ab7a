"""The regression gate: this run against asv history for this machine, judged as ``asv compare`` judges.

The verdict uses asv's own comparison (``asv.commands.compare._is_result_better``: Mann-Whitney on
the samples when there are enough of them, else non-overlapping 99% confidence intervals), so the
gate and ``asv compare --factor`` never disagree. A difference beyond ``fail_pct`` that the
statistics cannot tell from noise is shown as "~" and never fails a run: CPU timings swing by tens
of percent, and a gate that fails on noise gets switched off.

Two runs are two machine states. Every run times a fixed matmul loop (the drift canary,
``engine/device/machine.py``) at its start and its end; between two runs the machine's speed moved by a
factor the canary bounds (``Drift``). Each timed metric is judged against that move: a slowdown fails
only if it is beyond the gate even when the canary's whole move (and nothing at all, the other
extreme) is put down to the machine; one the move could explain is "no verdict" for that metric
alone (``?``), and so is an unchanged metric whose real change the move could hide. A slowdown fails
unless the canary's own move reaches it less the gate (2.8x: a canary move of x2.67 at 5%). Exact
counts (syncs/step) fail on any rise, whatever the canary did.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from asv import util as asv_util
from asv.commands.compare import _is_result_better
from asv_runner.statistics import get_err

from ..errors import DecodePerfError
from ..fingerprint import differences
from ..git import git
from ..records import ResultRecord
from .config import commit_date_ms, local_repo, machine_name
from .schema import METRIC_BY_NAME, Point, env_name, plan
from .storage import known_definitions, load_results

MARKS = {
    "+": "worsened",
    "-": "improved",
    "~": "changed, but not significantly",
    "?": "no verdict: within the machine's own move",
    " ": "unchanged",
}


@dataclass(frozen=True)
class Row:
    benchmark: str
    params: dict[str, str]  # param name -> asv's repr string
    unit: str
    old: float | None  # None: no earlier value to compare with (see note)
    new: float
    ratio: float | None  # new / old; above 1 is worse
    mark: str  # "+" worse, "-" better, "~" beyond fail_pct but insignificant, "?" within the machine's move,
    # " " unchanged or not compared
    old_err: float | None = None  # half the interquartile range, as asv shows it
    new_err: float | None = None
    note: str = ""
    test: str = ""  # the pytest item measured (its nodeid): what reproduces the row alone

    @property
    def label(self) -> str:
        """The name ``asv compare`` prints: ``benchmark(param, ...)``."""
        return f"{self.benchmark}({', '.join(self.params.values())})" if self.params else self.benchmark


@dataclass
class Comparison:
    machine: str
    env: str | None
    ref: str | None  # the commit compared with; None when there was none (see problem)
    current: str | None
    fail_pct: float
    rows: list[Row] = field(default_factory=list)
    problem: str | None = None  # why nothing was compared; a report, not a failure
    warnings: list[str] = field(default_factory=list)
    drift: Drift | None = None  # the machine's own move between the two runs (None: no canary in one of them)
    environment: list[str] = field(default_factory=list)  # how the two runs' fingerprints differ (fingerprint.py)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.mark == "+"]

    @property
    def improvements(self) -> list[Row]:
        return [r for r in self.rows if r.mark == "-"]

    @property
    def undecided(self) -> list[Row]:
        return [r for r in self.rows if r.mark == "?"]

    @property
    def failed(self) -> bool:
        """A significant regression beyond the gate and beyond the machine's own move, or a rise of an exact count."""
        return bool(self.regressions)


@dataclass(frozen=True)
class Drift:
    """How far the machine's own speed moved between two runs, as their canaries bound it.

    Each run's canary is a range (its start and end timings, seconds): while its decode was measured,
    the machine ran somewhere in it. The move is then somewhere in ``[lo, hi]``; a decode metric may
    also not follow the canary at all (the loop is compute, a decode step of a small model mostly
    overhead), so ``1`` is always inside the range a metric's change is judged against.
    """

    old: tuple[float, float]
    new: tuple[float, float]

    @property
    def ratio(self) -> float:
        return math.sqrt(self.new[0] * self.new[1] / (self.old[0] * self.old[1]))

    @property
    def lo(self) -> float:
        return self.new[0] / self.old[1]

    @property
    def hi(self) -> float:
        return self.new[1] / self.old[0]

    def moved(self, factor: float) -> bool:
        """Whether the machine may have moved by more than the gate."""
        return self.hi > factor or self.lo < 1.0 / factor

    def effect(self, ratio: float) -> tuple[float, float]:
        """The code's share of a metric's ``ratio`` (new / old), at the two ends of the machine's move."""
        return ratio / max(1.0, self.hi), ratio / min(1.0, self.lo)

    def judge(self, mark: str, ratio: float, factor: float) -> tuple[str, str]:
        """asv's ``mark`` for a timed metric, seen through the move: (mark, note)."""
        low, high = self.effect(ratio)
        move = f"the machine moved x{self.lo:.2f}-x{self.hi:.2f} (drift canary)"
        if mark == "+" and low <= factor:
            return "?", f"no verdict: {move}, which could explain x{ratio:.2f}"
        if mark == "-" and high >= 1.0 / factor:
            return "?", f"no verdict: {move}, which could explain x{ratio:.2f}"
        # Both ways, though a machine that got slower could, by the canary's bound, hide only an improvement:
        # a decode step does not follow a matmul loop closely enough to lean on that (measured: an asymmetric
        # rule called a +10% slowdown unchanged in 1 of 20 marks on the 2-core VM, docs/explanation/validity.md).
        if mark in " ~" and self.moved(factor) and (high > factor or low < 1.0 / factor):
            return "?", f"no verdict: {move}, which could hide a change beyond the gate (x{low:.2f}-x{high:.2f})"
        return mark, ""

    def describe(self) -> str:
        def ms(pair: tuple[float, float]) -> str:
            return f"{pair[0] * 1e3:.2f}" if pair[0] == pair[1] else f"{pair[0] * 1e3:.2f}-{pair[1] * 1e3:.2f}"

        return (
            f"the machine's own speed moved x{self.ratio:.2f} between the two runs (drift canary, a fixed matmul "
            f"loop: {ms(self.old)} ms -> {ms(self.new)} ms, x{self.lo:.2f}-x{self.hi:.2f} over each run's start and "
            "end); each timed metric is judged against that move: beyond it fails, within it is no verdict ('?')"
        )


def _history(results_dir: Path, machine: str, env: str, warnings: list[str]) -> dict[str, Any]:
    """This machine's results files for ``env``, by commit; an unreadable one is a warning, not a verdict."""
    found: dict[str, Any] = {}
    for path in sorted((results_dir / machine).glob(f"*-{env}.json")):
        try:
            res = load_results(path, machine)
        except DecodePerfError as exc:
            warnings.append(f"skipped {exc}")
            continue
        found[res.commit_hash] = res
    return found


def _order(commits: Sequence[str], dates: dict[str, float], repo_dir: str | Path | None) -> dict[str, float]:
    """asv's commit order (``git rev-list --all --date-order``), else the commit dates in the result files."""
    repo = local_repo(repo_dir)
    if repo is not None:
        try:
            revisions: dict[str, int] = repo.get_revisions(set(commits))
        except (asv_util.UserError, asv_util.ProcessError, OSError):
            revisions = {}
        if all(c in revisions for c in commits):
            return {c: float(revisions[c]) for c in commits}
    return {c: dates.get(c, math.inf) for c in commits}


def find_ref(
    history: dict[str, Any], ref: str | None, current: str | None, repo_dir: str | Path | None
) -> tuple[str | None, str | None]:
    """The commit to compare with, or None and why: ``ref`` by hash prefix, else the latest before ``current``.

    ``ref`` "latest" (or empty) is the default, what ``--decodeperf-compare`` without a value gives.
    """
    if not history:
        return None, "no results for this machine yet"
    if ref is not None and ref not in ("", "latest"):
        matches = [c for c in history if c.startswith(ref.lower())]
        if not matches and repo_dir is not None:  # a branch or tag name: resolve it in the repository
            full = git(repo_dir, "rev-parse", "--verify", f"{ref}^{{commit}}")
            matches = [c for c in history if full and c == full]
        if len(matches) > 1:
            raise DecodePerfError(f"commit {ref!r} is ambiguous in asv history: {', '.join(sorted(matches))}")
        return (matches[0], None) if matches else (None, f"no results for commit {ref!r}")
    dates = {c: float(res.date or 0) for c, res in history.items()}
    if current is not None and current not in dates:
        dates[current] = float(commit_date_ms(repo_dir, current) or math.inf)
    order = _order([*history, *([current] if current and current not in history else [])], dates, repo_dir)
    limit = order[current] if current is not None else math.inf
    earlier = [c for c in history if c != current and order[c] <= limit]
    if not earlier:
        return None, "no results for an earlier commit"
    return max(earlier, key=lambda c: (order[c], dates[c])), None


def _old_values(res: Any, benchmark: str) -> dict[tuple[str, ...], tuple[Any, Any, Any]]:
    """Value, stats and samples by parameter combination, as the results file stored them."""
    if benchmark not in res.get_all_result_keys():
        return {}
    params = res.get_result_params(benchmark)
    columns = zip(
        res.get_result_value(benchmark, params),
        res.get_result_stats(benchmark, params),
        res.get_result_samples(benchmark, params),
        strict=True,
    )
    return dict(zip(itertools.product(*params), columns, strict=True))


def _err(value: float | None, stats: Any) -> float | None:
    return float(get_err(value, stats)) if stats and value is not None else None


def _mark(old: float, new: float, old_ss: tuple[Any, Any], new_ss: tuple[Any, Any], factor: float) -> str:
    """asv compare's verdict for one row, with ``factor`` = 1 + fail_pct / 100."""
    if _is_result_better(new, old, new_ss, old_ss, factor):
        return "-"
    if _is_result_better(old, new, old_ss, new_ss, factor):
        return "+"
    if _is_result_better(new, old, None, None, factor) or _is_result_better(old, new, None, None, factor):
        return "~"
    return " "


def _row(
    point: Point,
    entry: dict[str, Any],
    ref_res: Any,
    old: dict[tuple[str, ...], Any],
    factor: float,
    drift: Drift | None = None,
) -> Row:
    params = dict(zip(entry["param_names"], point.params, strict=True))
    new_err = _err(point.value, point.stats)
    base = Row(point.benchmark, params, entry["unit"], None, point.value, None, " ", None, new_err, test=point.test)
    if ref_res.benchmark_version.get(point.benchmark) not in (None, entry["version"]):
        return replace(base, note="not comparable: the metric's definition changed")
    value, stats, samples = old.get(point.params, (None, None, None))
    if value is None or value != value:  # None: not measured there; NaN: skipped
        return replace(base, note="no earlier value")
    ratio = point.value / value if value else (1.0 if point.value == value else math.inf)
    metric = METRIC_BY_NAME.get(point.benchmark.rsplit(".", 1)[-1])
    if metric is not None and not metric.gate:
        base = replace(base, old=float(value), ratio=ratio, note=f"not gated: {metric.ungated}")
        return base
    note = ""
    if metric is not None and metric.exact:  # a count does not vary: any increase is a regression
        mark = "+" if point.value > value else "-" if point.value < value else " "
    else:
        mark = _mark(value, point.value, (stats, samples), (point.stats, point.samples), factor)
        if drift is not None and metric is not None and metric.type == "time":
            mark, note = drift.judge(mark, ratio, factor)
    return replace(base, old=float(value), ratio=ratio, mark=mark, old_err=_err(value, stats), note=note)


def compare_with_history(
    records: Sequence[ResultRecord],
    results_dir: str | Path,
    machine: str | None = None,
    *,
    ref: str | None = None,
    current_commit: str | None = None,
    fail_pct: float = 5.0,
    repo_dir: str | Path | None = ".",
) -> Comparison:
    """Compare ``records`` with the history of this machine (asv's name for it, or ``machine``).

    ``ref``: a commit hash or prefix (or, with ``repo_dir``, any git name); None: the latest commit
    before ``current_commit`` that has results. A metric regresses when it is worse by more than
    ``fail_pct`` percent and the difference is significant. No history is a ``problem``, not an error.
    """
    if not (isinstance(fail_pct, (int, float)) and fail_pct >= 0):
        raise DecodePerfError(f"fail_pct must be a number >= 0, got {fail_pct!r}")
    results_dir = Path(results_dir)
    name = machine_name(machine)
    envs = sorted({env_name(r["device"]) for r in records})
    if len(envs) > 1:
        raise DecodePerfError(f"records of several devices ({', '.join(envs)}): compare one device at a time")
    cmp = Comparison(name, envs[0] if envs else None, None, current_commit, float(fail_pct))
    if not envs:
        cmp.problem = "no results in this run to compare"
        return cmp
    history = _history(results_dir, name, envs[0], cmp.warnings)
    cmp.ref, problem = find_ref(history, ref, current_commit, repo_dir)
    if cmp.ref is None:
        cmp.problem = f"nothing to compare with: {problem} in {results_dir / name} ({envs[0]})"
        return cmp
    ref_res = history[cmp.ref]
    # write_history keeps each run's fingerprint as the results file's requirements (older files: the versions)
    old_env = {str(k): str(v) for k, v in (getattr(ref_res, "_requirements", None) or {}).items()}
    cmp.environment = differences(old_env, next((r["fingerprint"] for r in records if r.get("fingerprint")), {}))
    defs, points = plan(records, known_definitions(results_dir))
    factor = 1 + fail_pct / 100
    old = {b: _old_values(ref_res, b) for b in defs}
    cmp.drift = _drift(points, old)
    cmp.rows = sorted(
        (_row(p, defs[p.benchmark].entry, ref_res, old[p.benchmark], factor, cmp.drift) for p in points),
        key=lambda r: (r.benchmark, r.label),
    )
    return cmp


CANARY = "track_drift_canary"


def _span(value: float, samples: Any) -> tuple[float, float]:
    """A run's canary range: its start and end timings, or the one value an older run recorded."""
    values = [float(v) for v in samples or [] if v == v and v > 0] or [float(value)]
    return min(values), max(values)


def _drift(points: Sequence[Point], old: dict[str, dict[tuple[str, ...], Any]]) -> Drift | None:
    """The machine's move between the two runs, from the first canary both recorded (None: one has none)."""
    for point in points:
        if not point.benchmark.endswith(CANARY) or not point.value > 0:
            continue
        value, _stats, samples = old.get(point.benchmark, {}).get(point.params, (None, None, None))
        if value is not None and value == value and value > 0:
            return Drift(_span(value, samples), _span(point.value, point.samples))
    return None

"""The controller of a same-session A/B run: process pairs, alternating rounds, a verdict per item.

The pytest session given ``--decodeperf-ab`` collects as usual, then starts one worker per side
(``worker.py``: A in a worktree of REF, B in the checkout), each a pytest session of its own tree,
*several times*: a run is up to ``processes`` process pairs, one after another (pyperf's design: one
process's memory layout, hash seed and core bias its timings for its whole life, so a verdict needs
several). In each pair both workers set up every item still undecided, warm it, and time rounds when
asked, one at a time, strictly alternating (each round then follows the other process's, so both
start equally cold), the side that starts and goes first alternating from pair to pair. A pair's
rounds of an item stop once its own ratio is pinned (``clustered.pinned``), at the round budget, or
when they take too long. After each process pair the gate (``clustered.py``) looks at every item, the
process pair being its unit; an item stops once each metric is decided, or one is worse. A
significant slowdown beyond the gate fails an item, and so does an item that could not be measured
on a side (an error there, a worker that died: the line says which); UNKNOWN says why and passes;
the sync count compares exactly. With ``--decodeperf-ab-python`` side A runs with another
interpreter, and the lines name the package versions that differ. Starting, ending and reaping the
workers (and what of that may overlap) is ``pairs.py``'s.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import DecodePerfError
from ..records import ABRecord
from ..workers import WorkerGone, WorkerProcess
from .checkout import Sides
from .clustered import MIN_ROUNDS, ClusteredAB, pinned
from .decision import Decision
from .environment import describe, record_versions, versions_of
from .items import METRIC_NAMES, PRIMARY, ItemVerdict
from .pairs import Pair, PairLauncher

__all__ = ["METRIC_NAMES", "PRIMARY", "ABRun", "ItemVerdict", "RoundError"]

BORROWED = "it imported the checkout's code"  # worker.py's words for side A importing B's code
ROUND_BUDGET_S = 30.0  # per item and process pair: fewer round pairs (at least SLOW_ROUNDS) when rounds are slow
SLOW_ROUNDS = 3


class RoundError(DecodePerfError):
    """One side failed this item (an out-of-memory, say); the worker is still there for the next one."""

    def __init__(self, side: str, message: str):
        super().__init__(f"side {side}: {message}")
        self.side = side


class ABRun:
    """The process pairs of one session and the verdicts so far."""

    def __init__(
        self,
        sides: Sides,
        tree_a: Path,
        threshold: float,
        max_pairs: int,
        processes: int,
        pytest_args: list[str],
        cpus: tuple[int, ...] | None = None,
    ):
        self.sides = sides
        self.threshold = threshold
        self.processes = processes
        self.rounds_per_pair = max(SLOW_ROUNDS, math.ceil(max_pairs / processes))
        self.cpus = cpus
        self.log_dir = Path(tempfile.mkdtemp(prefix="decodeperf-ab-logs-"))
        rel = sides.rootdir.relative_to(sides.top)
        trees = {"A": tree_a / rel, "B": sides.rootdir}
        self.launcher = PairLauncher(sides, trees, pytest_args, self.log_dir, cpus)
        self.items: dict[str, ItemVerdict] = {}
        self.current: Pair | None = None
        self.versions: dict[str, list[str | None]] = {}
        self.differs = ""  # the environments' differing versions, A -> B
        self.round_pairs: list[int] = []  # round pairs per item and process pair, as run
        self.broken: str | None = None

    @property
    def pair(self) -> int:
        """The process pairs started so far (the one running included)."""
        return self.current.index if self.current is not None else 0

    @property
    def workers(self) -> dict[str, WorkerProcess]:
        return self.current.workers if self.current is not None else {}

    # ------------------------------------------------------------------------------------------ processes
    def _next_pair(self) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
        """The next process pair and both sides' collection (the last pair may still be exiting: untimed)."""
        self.current = self.launcher.start(self.pair + 1)
        return self.launcher.collected(self.current)

    def _end_pair(self) -> None:
        self.launcher.end(self.current)

    def start(self, nodeids: list[str], labels: dict[str, str]) -> tuple[set[str], str | None]:
        """Start the first process pair and check both sides: (the nodeids not judged, why none at all, if so)."""
        collected, problems = self._next_pair()
        side_a = f"side A ({self.sides.against})" if self.sides.same_code else f"side A (REF {self.sides.against})"
        if problems["B"]:
            raise DecodePerfError(f"side B (the checkout): {problems['B'][0]}")
        borrowed = [p for p in problems["A"] if p.startswith(BORROWED)]
        if borrowed:  # a misconfiguration, not an old REF: refuse rather than pass having judged nothing
            raise DecodePerfError(f"{side_a}: {borrowed[0]}")
        lost = [n for n in nodeids if n not in collected["B"]]
        if lost and not problems["A"]:
            raise DecodePerfError(
                f"side B's worker did not collect {lost[0]}"
                + (f" and {len(lost) - 1} more" if len(lost) > 1 else "")
                + ": it gets only the decodeperf options, -p, -o and --import-mode of this command line"
            )
        assert self.current is not None
        a, b = (versions_of(self.current.environments.get(side, {})) for side in ("A", "B"))
        self.versions, self.differs = record_versions(a, b), describe(a, b)
        both = [] if problems["A"] else [n for n in nodeids if n in collected["A"]]
        self.items = {n: ItemVerdict(n, labels.get(n, n), differs=self.differs) for n in both}
        self._order(both)
        why = f"{side_a}: {problems['A'][0]}" if problems["A"] else None
        return set(nodeids) - set(both), why

    def _order(self, nodeids: list[str]) -> None:
        for worker in self.workers.values():
            worker.send("order", nodeids)

    # ------------------------------------------------------------------------------------------- the run
    def run(self, progress: Callable[[str], None] = lambda line: None) -> None:
        """Every process pair until each item is settled or the budget is spent (the first pair is started)."""
        start = time.monotonic()
        try:
            while True:
                undecided = [item for item in self.items.values() if not item.settled]
                for item in undecided:
                    self._judge(item)
                self._end_pair()
                left = [item for item in self.items.values() if not item.settled]
                progress(
                    f"A/B process pair {self.pair}/{self.processes}: {len(self.items) - len(left)} of "
                    f"{len(self.items)} items decided ({time.monotonic() - start:.0f} s)"
                )
                if not left or self.pair >= self.processes:
                    return
                collected, problems = self._next_pair()
                missing = [i.nodeid for i in left if i.nodeid not in collected["A"] or i.nodeid not in collected["B"]]
                if problems["A"] or problems["B"] or missing:
                    why = [*problems["A"], *problems["B"], *(f"{n} not collected" for n in missing)]
                    raise WorkerGone(f"process pair {self.pair} collected other items than the first: {why[0]}")
                self._order([item.nodeid for item in left])
        except WorkerGone as exc:
            self.broken = str(exc)
            for item in self.items.values():
                if not item.settled and item.error is None:
                    item.error = self.broken
        finally:
            self._end_pair()

    def _judge(self, item: ItemVerdict) -> None:
        """One process pair's rounds of one item, added to its gates."""
        ready = {side: w.recv() for side, w in self.workers.items()}
        for side, msg in ready.items():
            if msg[1] != item.nodeid:
                raise WorkerGone(f"side {side} is at {msg[1]}, the controller at {item.nodeid}: out of step")
        errors = [f"side {side}: {msg[2]}" for side, msg in ready.items() if msg[0] == "error"]
        if errors:
            for side, msg in ready.items():
                if msg[0] == "ready":
                    self.workers[side].send("done")
            item.error = "; ".join(errors)
            return
        if item.syncs == (None, None):
            item.syncs = (ready["A"][2]["syncs_per_step"], ready["B"][2]["syncs_per_step"])
        self.launcher.reap()  # the last pair's processes are gone before anything is timed
        rows = self._rounds(item)
        if item.error is None:
            self._add(item, rows)

    def _rounds(self, item: ItemVerdict) -> dict[str, list[dict[str, float]]]:
        """Alternating round pairs until this pair's ratio of the primary metric is pinned, or the budget."""
        assert self.current is not None
        rows: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        serving = {"A", "B"}
        began = time.monotonic()
        try:
            for i in range(self.rounds_per_pair):
                if i >= SLOW_ROUNDS and time.monotonic() - began > ROUND_BUDGET_S:
                    break
                if i >= MIN_ROUNDS and self._pinned(rows):
                    break
                for side in self.current.first:
                    rows[side].append(self._round(side, item.nodeid))
        except RoundError as exc:
            serving.discard(exc.side)  # that side left this item; the other still waits for "done"
            item.error = str(exc)
        finally:
            for side in serving:
                self.workers[side].send("done")
        self.round_pairs.append(min(len(rows["A"]), len(rows["B"])))
        return rows

    def _pinned(self, rows: dict[str, list[dict[str, float]]]) -> bool:
        a = [r.get(PRIMARY, math.nan) for r in rows["A"]]
        b = [r.get(PRIMARY, math.nan) for r in rows["B"]]
        if not all(math.isfinite(v) and v > 0 for v in (*a, *b)):
            return False  # a metric that cannot be judged is no reason to stop early
        return pinned(a, b, self.threshold)

    def _round(self, side: str, nodeid: str) -> dict[str, float]:
        worker = self.workers[side]
        worker.send("round")
        reply = worker.recv()
        if reply[0] == "error" and reply[1] == nodeid:
            raise RoundError(side, f"a round failed: {reply[2]}")
        if reply[0] != "round" or reply[1] != nodeid:
            raise WorkerGone(f"side {side} answered {reply[:2]!r} to a round of {nodeid}: out of step")
        metrics: dict[str, float] = reply[2]
        return metrics

    def _add(self, item: ItemVerdict, rows: dict[str, list[dict[str, float]]]) -> None:
        """Feed this process pair's rounds to each metric's gate (a metric with a NaN round cannot be judged)."""
        pairs = list(zip(rows["A"], rows["B"], strict=False))
        names = [k for k in rows["A"][0] if k in rows["B"][0]] if pairs else []
        for name in names:
            a = [ra[name] for ra, _ in pairs]
            b = [rb[name] for _, rb in pairs]
            if not all(math.isfinite(v) and v > 0 for v in (*a, *b)):
                continue
            gate = item.gates.setdefault(name, ClusteredAB(self.threshold, max_processes=self.processes))
            if not gate.done:
                gate.add(a, b)

    # ------------------------------------------------------------------------------------------- reports
    def verdict(self, nodeid: str) -> ItemVerdict | None:
        return self.items.get(nodeid)

    def records(self) -> list[ABRecord]:
        return [item.record(self.sides, self.threshold, self.versions) for item in self.items.values()]

    def _rounds_said(self) -> str:
        done = [n for n in self.round_pairs if n > 0]
        lo, hi = (min(done), max(done)) if done else (self.rounds_per_pair, self.rounds_per_pair)
        if lo == hi == self.rounds_per_pair:
            return f"{lo} alternating round pairs each"
        span = f"{lo}" if lo == hi else f"{lo}-{hi}"
        at_most = f"of at most {self.rounds_per_pair}"
        return f"{span} {at_most} alternating round pairs each (fewer once a pair's ratio is pinned)"

    def _environment_line(self) -> list[str]:
        if self.differs:
            return [f"environments differ, A -> B: {self.differs}"]
        if self.sides.python is not None:
            return ["environments: both sides have the same package versions (only the interpreter's path differs)"]
        return []

    def summary(self) -> list[str]:
        gate = f"{self.threshold * 100:g}%"
        pinned_to = f"; both sides pinned to CPU {','.join(map(str, self.cpus))}" if self.cpus else ""
        head = (
            f"decode perf A/B: {self.sides.label}; gate {gate}, {self.pair} of at most {self.processes} process "
            f"pairs, {self._rounds_said()}{pinned_to}"
        )
        counts: dict[str, int] = {}
        for item in self.items.values():
            for v in item.verdicts.values():
                key = "not judged" if v.note.startswith("not judged") else v.decision.value.replace("_", " ")
                counts[key] = counts.get(key, 0) + 1
        order = [*(d.value.replace("_", " ") for d in Decision), "not judged"]
        tally = ", ".join(f"{counts[d]} {d}" for d in order if d in counts) or "no verdict"
        return [
            head,
            *self._environment_line(),
            *(item.line() for item in self.items.values()),
            f"verdicts: {tally} (UNKNOWN never fails)",
        ]

    def close(self) -> None:
        """End the workers; their logs go too unless something broke (the verdict lines name them)."""
        self._end_pair()
        self.launcher.reap()
        if self.broken is None and not any(item.error for item in self.items.values()):
            shutil.rmtree(self.log_dir, ignore_errors=True)

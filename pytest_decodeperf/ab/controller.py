"""The controller of a same-session A/B run: process pairs, alternating rounds, a verdict per item.

The pytest session given ``--decodeperf-ab`` collects as usual, then starts one worker per side
(``worker.py``: A in a worktree of REF, B in the checkout), each a pytest session of its own tree,
*several times*: a run is up to ``processes`` process pairs, one after another (pyperf's design: one
process's memory layout, hash seed and core bias its timings for its whole life, so a verdict needs
several). In each pair both workers set up every item still undecided, warm it, and time rounds when
asked, one at a time, strictly alternating (each round then follows the other process's, so both
start equally cold), the side that starts and goes first alternating from pair to pair. After each
process pair the gate (``clustered.py``) looks at every item, the process pair being its unit; an
item stops once each metric is decided, or one is worse. A significant slowdown beyond the gate fails
an item, and so does an item that could not be measured on a side (an error there, a worker that
died: the line says which); UNKNOWN says why and passes; the sync count compares exactly.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DecodePerfError
from ..records import ABMetric, ABRecord
from ..workers import WorkerGone, WorkerProcess, child_env, close_all
from .checkout import Sides
from .clustered import ClusteredAB
from .decision import Decision, Verdict

BORROWED = "it imported the checkout's code"  # worker.py's words for side A importing B's code
METRIC_NAMES = {"ms_per_token": "ms/token", "prefill_ms": "prefill", "tpot_ms": "TPOT", "request_ttft_ms": "TTFT"}
PRIMARY = "ms_per_token"  # the metric a run keeps sampling for; the others ride along unless resolvable
ROUND_BUDGET_S = 30.0  # per item and process pair: fewer round pairs (at least MIN_ROUNDS) when rounds are slow
MIN_ROUNDS = 3


class RoundError(DecodePerfError):
    """One side failed this item (an out-of-memory, say); the worker is still there for the next one."""

    def __init__(self, side: str, message: str):
        super().__init__(f"side {side}: {message}")
        self.side = side


@dataclass
class ItemVerdict:
    nodeid: str
    label: str
    gates: dict[str, ClusteredAB] = field(default_factory=dict)
    syncs: tuple[float | None, float | None] = (None, None)
    error: str | None = None

    @property
    def verdicts(self) -> dict[str, Verdict]:
        return {name: gate.verdict() for name, gate in self.gates.items()}

    @property
    def syncs_rose(self) -> bool:
        a, b = self.syncs
        return a is not None and b is not None and b > a

    @property
    def failed(self) -> bool:
        return self.error is not None or self.syncs_rose or any(v.failed for v in self.verdicts.values())

    @property
    def settled(self) -> bool:
        """Nothing more to sample: an error, a rise in syncs, a worse metric, or every metric decided.

        A secondary metric (prefill) that cannot be shown within the gate in the budget is not waited for.
        """
        if self.error is not None or self.syncs_rose or any(v.failed for v in self.verdicts.values()):
            return True
        waited = [g for name, g in self.gates.items() if name == PRIMARY or not g.hopeless()]
        return bool(self.gates) and all(g.done for g in waited)

    def record(self, sides: Sides, threshold: float) -> ABRecord:
        def nan_none(x: float) -> float | None:
            return None if math.isnan(x) else x

        metrics = {
            name: ABMetric(
                decision=v.decision.value,
                judged=not v.note.startswith("not judged"),
                ratio=nan_none(v.ratio),
                ci_low=nan_none(v.lo),
                ci_high=nan_none(v.hi),
                processes=v.processes,
                pairs=v.n_pairs,
                note=v.note,
            )
            for name, v in self.verdicts.items()
        }
        return ABRecord(
            test=self.nodeid,
            ref=sides.ref,
            a_commit=sides.a_commit,
            b_commit=sides.b_commit,
            gate_pct=100.0 * threshold,
            failed=self.failed,
            error=self.error,
            metrics=metrics,
            syncs_per_step=list(self.syncs),
        )

    def line(self) -> str:
        if self.error is not None:
            return f"{self.label}: error (fails): {self.error}"
        parts = [f"{METRIC_NAMES.get(k, k)} {v.message()}" for k, v in self.verdicts.items()]
        a, b = self.syncs
        if a is not None and b is not None:
            parts.append(f"syncs/step {a:g} -> {b:g}" + (" (rose: fails)" if b > a else ""))
        return f"{self.label}: " + "; ".join(parts or ["no metric could be timed"])


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
        self.rounds_per_pair = max(MIN_ROUNDS, math.ceil(max_pairs / processes))
        self.pytest_args = pytest_args
        self.cpus = cpus
        self.log_dir = Path(tempfile.mkdtemp(prefix="decodeperf-ab-logs-"))
        rel = sides.rootdir.relative_to(sides.top)
        self.trees = {"A": tree_a / rel, "B": sides.rootdir}
        self.items: dict[str, ItemVerdict] = {}
        self.pair = 0  # process pairs started so far
        self.workers: dict[str, WorkerProcess] = {}
        self.broken: str | None = None

    # ------------------------------------------------------------------------------------------ processes
    def _start_pair(self) -> None:
        """Both workers of the next process pair; the side started first alternates."""
        extra = {"DECODEPERF_AB_CPUS": ",".join(map(str, self.cpus))} if self.cpus else {}
        script = Path(__file__).with_name("worker.py")
        order = ("A", "B") if self.pair % 2 == 0 else ("B", "A")
        self.pair += 1
        for side in order:
            env = child_env(("DECODEPERF_AB",), extra)  # a worker must not start an A/B of its own
            if side == "A":
                env["DECODEPERF_AB_FOREIGN"] = str(self.sides.top)
            tree = self.trees[side]
            args = [str(tree), "--", "--rootdir", str(tree), *self.pytest_args]
            log = self.log_dir / f"worker-{side}-{self.pair}.log"
            self.workers[side] = WorkerProcess(f"side {side}", script, args, tree, log, env)

    def _end_pair(self) -> None:
        close_all(self.workers.values())
        self.workers = {}

    def _collected(self) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
        collected: dict[str, set[str]] = {}
        problems: dict[str, list[str]] = {}
        for side, worker in self.workers.items():
            message = worker.recv()
            if message[0] != "collected":
                raise WorkerGone(f"side {side} sent {message[0]!r} before its collection: out of step")
            if message[1] != 1:
                raise DecodePerfError(f"side {side}'s worker speaks A/B protocol {message[1]!r}, this one 1")
            collected[side], problems[side] = set(message[2]), list(message[3])
        return collected, problems

    def start(self, nodeids: list[str], labels: dict[str, str]) -> tuple[set[str], str | None]:
        """Start the first process pair and check both sides: (the nodeids not judged, why none at all, if so)."""
        self._start_pair()
        collected, problems = self._collected()
        if problems["B"]:
            raise DecodePerfError(f"side B (the checkout): {problems['B'][0]}")
        borrowed = [p for p in problems["A"] if p.startswith(BORROWED)]
        if borrowed:  # a misconfiguration, not an old REF: refuse rather than pass having judged nothing
            raise DecodePerfError(f"side A (REF {self.sides.ref}): {borrowed[0]}")
        lost = [n for n in nodeids if n not in collected["B"]]
        if lost and not problems["A"]:
            raise DecodePerfError(
                f"side B's worker did not collect {lost[0]}"
                + (f" and {len(lost) - 1} more" if len(lost) > 1 else "")
                + ": it gets only the decodeperf options, -p, -o and --import-mode of this command line"
            )
        both = [] if problems["A"] else [n for n in nodeids if n in collected["A"]]
        self.items = {n: ItemVerdict(n, labels.get(n, n)) for n in both}
        self._order(both)
        why = f"side A (REF {self.sides.ref}): {problems['A'][0]}" if problems["A"] else None
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
                self._start_pair()
                collected, problems = self._collected()
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
        first, second = ("A", "B") if self.pair % 2 == 1 else ("B", "A")
        rows: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        serving = {"A", "B"}
        began = time.monotonic()
        try:
            for i in range(self.rounds_per_pair):
                if i >= MIN_ROUNDS and time.monotonic() - began > ROUND_BUDGET_S:
                    break
                for side in (first, second):
                    rows[side].append(self._round(side, item.nodeid))
        except RoundError as exc:
            serving.discard(exc.side)  # that side left this item; the other still waits for "done"
            item.error = str(exc)
        finally:
            for side in serving:
                self.workers[side].send("done")
        if item.error is None:
            self._add(item, rows)

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
        return [item.record(self.sides, self.threshold) for item in self.items.values()]

    def summary(self) -> list[str]:
        gate = f"{self.threshold * 100:g}%"
        pinned = f"; both sides pinned to CPU {','.join(map(str, self.cpus))}" if self.cpus else ""
        head = (
            f"decode perf A/B: {self.sides.label}; gate {gate}, {self.pair} of at most {self.processes} process "
            f"pairs, {self.rounds_per_pair} alternating round pairs each{pinned}"
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
            *(item.line() for item in self.items.values()),
            f"verdicts: {tally} (UNKNOWN never fails)",
        ]

    def close(self) -> None:
        """End the workers; their logs go too unless something broke (the verdict lines name them)."""
        self._end_pair()
        if self.broken is None and not any(item.error for item in self.items.values()):
            shutil.rmtree(self.log_dir, ignore_errors=True)

"""The controller of a same-session A/B run: two workers, rounds in ABBA lockstep, a verdict per item.

The pytest session that was given ``--decodeperf-ab`` collects as usual, then starts one worker per
side (``worker.py``: A in a worktree of REF, B in the checkout), each a pytest session of its own
tree. For every marked item both workers set it up and warm it; then the controller asks for one
round at a time, A B B A A B ..., never both at once (one GPU, one machine state), and after each
block of pairs asks the sequential gate (``decision.py``) per metric. Only a significant slowdown
beyond the gate fails the item; UNKNOWN says so and passes; the sync count compares exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import DecodePerfError
from .checkout import Sides
from .decision import Decision, SequentialAB, Verdict

BLOCK = 10  # pairs between two looks of the gate
BORROWED = "it imported the checkout's code"  # worker.py's words for side A importing B's code
REPLY_TIMEOUT_S = 1800.0  # a warmup with torch.compile on a big model can take minutes
METRIC_NAMES = {"ms_per_token": "ms/token", "prefill_ms": "prefill"}


class WorkerGone(DecodePerfError):
    """A worker died or fell out of step: the rest of the run cannot be judged."""


class RoundError(DecodePerfError):
    """One side failed this item (an out-of-memory, say); the worker is still there for the next one."""

    def __init__(self, side: str, message: str):
        super().__init__(f"side {side}: {message}")
        self.side = side


class Worker:
    """One side: its process, its two pipes, its log file."""

    def __init__(
        self, side: str, tree: Path, rootdir: Path, pytest_args: list[str], log_dir: Path, foreign: Path | None = None
    ):
        self.side = side
        self.log_path = log_dir / f"worker-{side}.log"
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        script = Path(__file__).with_name("worker.py")
        fds = f"{to_worker_r},{from_worker_w}"
        cmd = [sys.executable, str(script), fds, str(tree), "--", "--rootdir", str(rootdir), *pytest_args]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=rootdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(to_worker_r, from_worker_w),
                env=_worker_env(foreign),
            )
        os.close(to_worker_r)
        os.close(from_worker_w)  # the worker's end: reading sees EOF once it exits
        self._out = Connection(to_worker_w, readable=False)
        self._in = Connection(from_worker_r, writable=False)

    def send(self, *message: Any) -> None:
        try:
            self._out.send(message)
        except OSError:
            raise WorkerGone(self.gone()) from None

    def recv(self) -> tuple[Any, ...]:
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while not self._in.poll(1.0):
            if self.proc.poll() is not None and not self._in.poll(0.1):
                raise WorkerGone(self.gone())
            if time.monotonic() > deadline:
                raise WorkerGone(f"side {self.side} gave no answer in {REPLY_TIMEOUT_S:.0f} s ({self.log_path})")
        try:
            message: tuple[Any, ...] = self._in.recv()
        except (EOFError, OSError):
            raise WorkerGone(self.gone()) from None
        if message[0] == "exit":  # its pytest session ended before the controller was done with it
            raise WorkerGone(self.gone())
        return message

    def gone(self) -> str:
        code = self.proc.wait(timeout=30)
        tail = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()][-1:]
        last = f": {tail[0].strip()}" if tail else ""
        return f"side {self.side}'s worker exited ({code}){last} (whole log: {self.log_path})"

    def close_pipes(self) -> None:
        for conn in (self._out, self._in):
            conn.close()

    def reap(self) -> None:
        """Wait a little for the worker to see EOF and finish, then end it."""
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _worker_env(foreign: Path | None) -> dict[str, str]:
    """The environment of a worker: no A/B options of its own (it would start workers in turn)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DECODEPERF_AB")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if foreign is not None:
        env["DECODEPERF_AB_FOREIGN"] = str(foreign)
    return env


@dataclass
class ItemVerdict:
    nodeid: str
    label: str
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    syncs: tuple[float | None, float | None] = (None, None)
    error: str | None = None

    @property
    def syncs_rose(self) -> bool:
        a, b = self.syncs
        return a is not None and b is not None and b > a

    @property
    def failed(self) -> bool:
        return self.error is not None or self.syncs_rose or any(v.failed for v in self.verdicts.values())

    def line(self) -> str:
        if self.error is not None:
            return f"{self.label}: no verdict: {self.error}"
        parts = [f"{METRIC_NAMES.get(k, k)} {v.message()}" for k, v in self.verdicts.items()]
        a, b = self.syncs
        if a is not None and b is not None:
            parts.append(f"syncs/step {a:g} -> {b:g}" + (" (rose: fails)" if b > a else ""))
        return f"{self.label}: " + "; ".join(parts)


class ABRun:
    """Both workers of one session and the verdicts so far."""

    def __init__(self, sides: Sides, tree_a: Path, threshold: float, max_pairs: int, pytest_args: list[str]):
        self.sides = sides
        self.threshold = threshold
        self.max_pairs = max_pairs
        self.log_dir = Path(tempfile.mkdtemp(prefix="decodeperf-ab-logs-"))
        rel = sides.rootdir.relative_to(sides.top)
        self.workers = {
            "A": Worker("A", tree_a / rel, tree_a / rel, pytest_args, self.log_dir, foreign=sides.top),
            "B": Worker("B", sides.rootdir, sides.rootdir, pytest_args, self.log_dir),
        }
        self.results: list[ItemVerdict] = []
        self.broken: str | None = None

    def start(self, nodeids: list[str]) -> tuple[set[str], str | None]:
        """Hand both sides the controller's order: (the nodeids not judged, why none at all, if so)."""
        collected: dict[str, set[str]] = {}
        problems: dict[str, list[str]] = {}
        for side, worker in self.workers.items():
            message = worker.recv()
            if message[0] != "collected":
                raise WorkerGone(f"side {side} sent {message[0]!r} before its collection: out of step")
            if message[1] != 1:
                raise DecodePerfError(f"side {side}'s worker speaks A/B protocol {message[1]!r}, this one 1")
            collected[side], problems[side] = set(message[2]), list(message[3])
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
        for worker in self.workers.values():
            worker.send("order", both)
        why = f"side A (REF {self.sides.ref}): {problems['A'][0]}" if problems["A"] else None
        return set(nodeids) - set(both), why

    def judge(self, nodeid: str, label: str) -> ItemVerdict:
        result = ItemVerdict(nodeid, label)
        self.results.append(result)
        if self.broken is not None:
            result.error = self.broken
            return result
        try:
            self._judge(result)
        except WorkerGone as exc:
            self.broken = str(exc)
            result.error = self.broken
        return result

    def _judge(self, result: ItemVerdict) -> None:
        ready = {side: w.recv() for side, w in self.workers.items()}
        errors = [f"side {side}: {msg[2]}" for side, msg in ready.items() if msg[0] == "error"]
        for side, msg in ready.items():
            if msg[1] != result.nodeid:
                raise WorkerGone(f"side {side} is at {msg[1]}, the controller at {result.nodeid}: out of step")
        if errors:
            for side, msg in ready.items():
                if msg[0] == "ready":
                    self.workers[side].send("done")
            result.error = "; ".join(errors)
            return
        result.syncs = (ready["A"][2]["syncs_per_step"], ready["B"][2]["syncs_per_step"])
        gates: dict[str, SequentialAB] = {}
        serving = set(self.workers)
        pairs = 0
        try:
            while pairs < self.max_pairs:
                block: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
                for i in range(min(BLOCK, self.max_pairs - pairs)):
                    order = ("A", "B") if (pairs + i) % 2 == 0 else ("B", "A")  # ABBA: each pair's order alternates
                    for side in order:
                        block[side].append(self._round(side, result.nodeid))
                pairs += len(block["A"])
                if self._look(gates, block):
                    break
        except RoundError as exc:
            serving.discard(exc.side)  # that side left this item; the other still waits for "done"
            result.error = str(exc)
        finally:
            for side in serving:
                self.workers[side].send("done")
        result.verdicts = {name: gate.verdict() for name, gate in gates.items()}

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

    def _look(self, gates: dict[str, SequentialAB], block: dict[str, list[dict[str, float]]]) -> bool:
        """Feed one block to each metric's gate; True once every metric is decided, or one is worse (it fails)."""
        names = [k for k in block["A"][0] if k in block["B"][0]]
        for name in names:
            a = [r[name] for r in block["A"]]
            b = [r[name] for r in block["B"]]
            if not all(v == v and v > 0 for v in (*a, *b)):  # a NaN (no decode step) cannot be judged
                continue
            gate = gates.setdefault(name, SequentialAB(self.threshold, max_pairs=self.max_pairs))
            if not gate.done:
                gate.add(a, b)
        if any(g.verdict().failed for g in gates.values()):
            return True  # the item fails whatever the other metrics say: no need to sample on
        return bool(gates) and all(g.done for g in gates.values())

    def summary(self) -> list[str]:
        gate = f"{self.threshold * 100:g}%"
        head = f"decode perf A/B: {self.sides.label}; gate {gate}, ABBA rounds, at most {self.max_pairs} pairs"
        counts: dict[str, int] = {}
        for r in self.results:
            for v in r.verdicts.values():
                counts[v.decision.value] = counts.get(v.decision.value, 0) + 1
        order = [d.value for d in Decision]
        tally = ", ".join(f"{counts[d]} {d.replace('_', ' ')}" for d in order if d in counts) or "no verdict"
        return [head, *(r.line() for r in self.results), f"verdicts: {tally} (UNKNOWN never fails)"]

    def skip(self, nodeid: str) -> None:
        """The controller will not judge ``nodeid`` (its own setup failed): keep both workers in step."""
        if self.broken is not None:
            return
        try:
            for side, worker in self.workers.items():
                message = worker.recv()
                if message[1] != nodeid:
                    raise WorkerGone(f"side {side} is at {message[1]}, the controller at {nodeid}: out of step")
                if message[0] == "ready":
                    worker.send("done")
        except WorkerGone as exc:
            self.broken = str(exc)

    def close(self) -> None:
        """Close every pipe first (a worker still waiting reads EOF and exits), then reap both processes."""
        for worker in self.workers.values():
            worker.close_pipes()
        for worker in self.workers.values():
            worker.reap()

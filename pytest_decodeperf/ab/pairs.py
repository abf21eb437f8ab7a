"""The worker processes of an A/B run, a process pair at a time: started, ended, reaped.

A process pair costs its start-up (an interpreter, torch, transformers, pytest, the collection) before
any round: seconds, against a small model's rounds. Some of it is hidden where nothing timed can be
disturbed (the *warm start*): the next pair starts as soon as the last one is told to end, without
waiting for it to exit (both are untimed), and the old processes are reaped before the new pair's
first round (:meth:`PairLauncher.reap`). And exact counts need no second look: only the first process
pair counts the syncs per step (``DECODEPERF_AB_SYNCS=0`` for the others), a generation per item and
side saved.

What is *not* done: starting the next pair while this one times its rounds, even on a CPU the timed
side does not use. Measured on the 2-core VM (one vCPU timing, the next pair's start-up on the other),
the timed side's rounds ran up to 2.5x slower while it lasted, and not alike for both sides: a busy-wait
does not slow down, compute does, so the process pairs' estimates scattered over x0.4-x14 on a 4x
slowdown. Two vCPUs of a VM, or two cores under one turbo budget, are not independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DecodePerfError
from ..workers import WorkerGone, WorkerProcess, child_env
from .checkout import Sides

MESSAGES = 1  # the pipe conversation's version (pairs.py checks it); what the package offers is protocol.py's


@dataclass
class Pair:
    """One process pair: its 1-based index, both workers, what each side reported it runs with."""

    index: int
    workers: dict[str, WorkerProcess]
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def first(self) -> tuple[str, str]:
        """The side started first and timed first in each round pair: alternates from pair to pair."""
        return ("A", "B") if self.index % 2 == 1 else ("B", "A")


class PairLauncher:
    """Starts process pairs for one run (A in ``trees["A"]`` with ``sides.python``, B in the checkout)."""

    def __init__(
        self,
        sides: Sides,
        trees: dict[str, Path],
        pytest_args: list[str],
        log_dir: Path,
        cpus: tuple[int, ...] | None,
    ):
        self.sides, self.trees, self.pytest_args, self.log_dir = sides, trees, pytest_args, log_dir
        self.cpus = cpus
        self.leaving: list[WorkerProcess] = []  # told to end, not reaped yet

    def start(self, index: int) -> Pair:
        """Both workers of pair ``index``, the side started first alternating."""
        extra = {"DECODEPERF_AB_CPUS": ",".join(map(str, self.cpus))} if self.cpus else {}
        if index > 1:
            extra["DECODEPERF_AB_SYNCS"] = "0"  # counted exactly by the first pair
        script = Path(__file__).with_name("worker.py")
        pair = Pair(index, {})
        for side in pair.first:
            env = child_env(("DECODEPERF_AB",), extra)  # a worker must not start an A/B of its own
            if side == "A" and not self.sides.same_code:
                env["DECODEPERF_AB_FOREIGN"] = str(self.sides.top)
            tree = self.trees[side]
            args = [str(tree), "--", "--rootdir", str(tree), *self.pytest_args]
            log = self.log_dir / f"worker-{side}-{index}.log"
            python = self.sides.python if side == "A" else None
            try:
                pair.workers[side] = WorkerProcess(f"side {side}", script, args, tree, log, env, python=python)
            except OSError as exc:  # the interpreter vanished since it was checked
                self.end(pair)
                raise WorkerGone(f"side {side}'s worker could not start: {exc}") from None
        return pair

    def collected(self, pair: Pair) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
        """Each side's environment, then its collection: (the marked node ids, why it cannot be timed)."""
        collected: dict[str, set[str]] = {}
        problems: dict[str, list[str]] = {}
        for side, worker in pair.workers.items():
            message = worker.recv()
            if message[0] == "environment":
                pair.environments[side] = dict(message[1])
                message = worker.recv()
            if message[0] != "collected":
                raise WorkerGone(f"side {side} sent {message[0]!r} before its collection: out of step")
            if message[1] != MESSAGES:
                raise DecodePerfError(f"side {side}'s worker speaks A/B messages {message[1]!r}, this one {MESSAGES}")
            collected[side], problems[side] = set(message[2]), list(message[3])
        return collected, problems

    def end(self, pair: Pair | None) -> None:
        """Tell both workers to end (their pipes close) and go on: :meth:`reap` collects them."""
        if pair is None:
            return
        for worker in pair.workers.values():
            worker.close_pipes()
        self.leaving += pair.workers.values()
        pair.workers = {}

    def reap(self) -> None:
        """Wait for every worker told to end (before a round is timed, and at the run's end)."""
        while self.leaving:
            self.leaving.pop().reap()

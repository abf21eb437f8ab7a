"""The ranks the plugin starts on one machine, for the items of one ``tp`` size, and the items they run.

The user's session stays out of the process group. At its first item of ``tp=N`` it starts N ranks through
``workers.py`` (the one way the plugin starts, talks to and ends its child processes), each ``worker.py``: a pytest
session of the same tree with the variables torchrun would set (a free port on this host, ``LOCAL_RANK`` = rank:
one GPU per rank on CUDA, gloo on the CPU). They collect, keep the items of that size in this session's order, and
load each model once; the ranks stay up for every later item of that size, and are ended when an item of another
size comes (it gets its own ranks) or the session ends. Per item, every rank is told to run it; the reports of
rank 0 (which the ranks' own lockstep has made every rank's verdict) and its record become the item's here.

A rank that dies, or stops answering, fails the item with its rank and the last line it logged; the other ranks
are ended at once (``close_all``), and the next item of that size starts fresh ones.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ..errors import DecodePerfError
from ..options import Settings
from ..records import ResultRecord
from ..workers import WorkerGone, WorkerProcess, child_env, close_all, pytest_args, recv_each

_SCRIPT = Path(__file__).with_name("worker.py")


class RankWorkers:
    """The plugin's ranks (see the module docstring). ``plan``: per tp size, its items' nodeids in session order."""

    def __init__(self, config: pytest.Config, settings: Settings, plan: dict[int, list[str]], files: list[str]):
        self.config = config
        self.settings = settings
        self.plan = plan
        self.files = files
        self.log_dir = Path(tempfile.mkdtemp(prefix="decodeperf-tp-logs-"))
        self.tp = 0
        self.workers: list[WorkerProcess] = []
        self.starts = 0

    def _args(self) -> list[str]:
        """Every rank expands the same variants as this session, and writes nothing."""
        s, config = self.settings, self.config
        args = ["--rootdir", str(config.rootpath), f"--decodeperf-rounds={s.rounds}"]
        args += [f"--decodeperf-max-time={s.max_time:g}", f"--decodeperf-tp-timeout={s.tp_timeout:g}"]
        if s.tp is not None:
            args.append("--decodeperf-tp=" + ",".join(map(str, s.tp)))
        return [*pytest_args(config, s, s.device), *args, *self.files]

    def _start(self, tp: int, order: list[str]) -> None:
        from ..engine.parallel.distributed import free_port, launch_env

        self.close()
        self.starts += 1
        port, args = free_port(), ["--", *self._args()]
        for rank in range(tp):
            # no DECODEPERF_* of this session's environment: the arguments carry its settings
            env = child_env(("DECODEPERF",), launch_env(rank, tp, port))
            log = self.log_dir / f"rank-{rank}-{self.starts}.log"
            cwd = self.config.invocation_params.dir
            self.workers.append(WorkerProcess(f"rank {rank}", _SCRIPT, args, cwd, log, env))
        self.tp = tp
        for rank, message in enumerate(recv_each(self.workers)):
            missing = [nodeid for nodeid in order if nodeid not in message[1]]
            if message[0] != "collected" or missing:
                raise DecodePerfError(f"rank {rank} did not collect {missing[:1] or message[:1]}: out of step")
        for worker in self.workers:
            worker.send("order", order)

    def _run(self, item: pytest.Item, tp: int) -> tuple[list[Any], list[ResultRecord]]:
        """Rank 0's serialized reports of ``item`` and its records."""
        if self.tp != tp or not self.workers:
            order = self.plan[tp]
            self._start(tp, order[order.index(item.nodeid) :])
        for worker in self.workers:
            worker.send("run", item.nodeid)
        replies = recv_each(self.workers)
        problems = [f"rank {r}: {m[4]}" for r, m in enumerate(replies) if m[0] != "done" or m[4] is not None]
        if problems:
            raise DecodePerfError("; ".join(problems))
        return list(replies[0][2]), list(replies[0][3])

    def protocol(self, item: pytest.Item, tp: int) -> list[ResultRecord]:
        """Run ``item`` on the ranks and log its reports as this session's; its records."""
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        began = time.time()
        try:
            data, records = self._run(item, tp)
            reports = [self.config.hook.pytest_report_from_serializable(config=self.config, data=d) for d in data]
        except (WorkerGone, DecodePerfError) as exc:
            self.close()  # the other ranks too: a group that lost a rank cannot go on
            reports, records = self._failed(item, f"tp={tp}: {exc}", began), []
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return records

    @staticmethod
    def _failed(item: pytest.Item, message: str, began: float) -> list[pytest.TestReport]:
        keywords: dict[str, Any] = {name: 1 for name in item.keywords}
        now = time.time()
        phases: Sequence[tuple[Any, Any]] = (("setup", "passed"), ("call", "failed"), ("teardown", "passed"))
        return [
            pytest.TestReport(
                item.nodeid,
                item.location,
                keywords,
                outcome,
                message if outcome == "failed" else None,
                when,
                duration=now - began if when == "call" else 0.0,
                start=began,
                stop=now,
            )
            for when, outcome in phases
        ]

    def close(self) -> None:
        """End every rank: their pipes first (each finishes its session), then the processes."""
        close_all(self.workers)
        self.workers, self.tp = [], 0

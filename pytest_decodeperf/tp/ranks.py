"""Inside each rank: the process group, every item's phases kept in step, and who reports.

Each rank is a pytest session of the same tree, collecting the same items in the same order, as under torchrun.
For every ``decode_perf`` item, after its setup and after its call, the ranks exchange that phase's outcome
over the control group (``parallel/distributed.py``) and each takes the worst: a rank whose setup failed keeps every
rank from measuring (one rank measuring alone would wait in the model's first collective), and a rank that failed
the call fails the item on every rank, named ("rank 1: ..."). Rank 0 alone reports (the table, JSON,
pytest-benchmark, asv history), unless the plugin started the ranks: then the session that started them does.

An item of ``tp=1`` runs on rank 0 alone while the others wait at the exchange; one of the launch's size runs on
every rank (``checks.py`` refuses any other). A rank that cannot reach the others (one died) fails the item and
stops its session: what its peers would run next could no longer be matched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch

    from ..engine.parallel.distributed import RankEnv, RankGroup
    from ..engine.spec.variants import Variant

CONTROL_TIMEOUT_S = 3600.0  # how long a rank waits at an exchange: rank 0 may run tp=1 items alone meanwhile


def _line(report: pytest.TestReport) -> str:
    """A phase's outcome in one line: the failure's message, or the skip's reason."""
    longrepr: Any = report.longrepr
    if report.passed or longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, lineno, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    text = str(getattr(crash, "message", None) or longrepr).strip()
    return text.splitlines()[0] if text else report.outcome


class RankSession:
    """This process as one rank of a launch (torchrun, srun, or the plugin's own ranks)."""

    def __init__(self, env: RankEnv) -> None:
        self.env = env
        self.group: RankGroup | None = None
        self.broken: str | None = None

    @property
    def reporter(self) -> bool:
        """Rank 0 writes and prints, unless the plugin started the ranks (the session that did reports)."""
        return self.env.rank == 0 and self.env.launcher != "plugin"

    def start(self, device: torch.device, timeout_s: float) -> RankGroup:
        """Join the process group (every rank of the launch must, before any item)."""
        if self.group is None:
            from ..engine.parallel.distributed import RankGroup

            self.group = RankGroup(self.env, device, timeout_s, max(CONTROL_TIMEOUT_S, timeout_s))
        return self.group

    def runs(self, variant: Variant) -> bool:
        """Whether this rank takes part in ``variant``: every rank of a sharded one, rank 0 alone at tp=1."""
        return variant.tp > 1 or self.env.rank == 0

    def _give_up(self, item: pytest.Item, report: pytest.TestReport, why: str) -> None:
        self.broken = self.broken or why
        report.outcome, report.longrepr = "failed", self.broken
        item.session.shouldstop = self.broken

    def agree(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """After a marked item's setup and after its call, on every rank: every rank's outcome, the worst kept."""
        if self.broken is not None or self.group is None:
            self._give_up(item, report, self.broken or "the ranks have no process group")
            return
        mine = (item.nodeid, report.when, report.outcome, _line(report))
        try:
            seen: list[tuple[str, str, str, str]] = self.group.exchange(mine)
        except Exception as exc:  # a rank died or stopped answering: nothing further can be matched
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self._give_up(item, report, f"the ranks lost each other at {item.nodeid} ({report.when}): {first}")
            return
        lost = [f"rank {r} is at {s[0]} ({s[1]})" for r, s in enumerate(seen) if s[:2] != mine[:2]]
        if lost:
            why = f"ranks out of step: rank {self.env.rank} is at {item.nodeid} ({report.when}), " + ", ".join(lost)
            self._give_up(item, report, why + " (did every rank collect the same items?)")
            return
        bad = [(rank, outcome, line) for rank, (_, _, outcome, line) in enumerate(seen) if outcome != "passed"]
        others = [f"rank {rank}: {line}" for rank, _, line in bad if rank != self.env.rank]
        if report.passed and bad:
            rank, outcome, line = next((b for b in bad if b[1] == "failed"), bad[0])
            message = f"rank {rank}: {line}"
            report.outcome = "failed" if outcome == "failed" else "skipped"
            report.longrepr = message if outcome == "failed" else (str(item.path), item.location[1] or 0, message)
        elif report.failed and others and isinstance(report.longrepr, str):
            report.longrepr = f"rank {self.env.rank}: {report.longrepr}; " + "; ".join(others)

    def close(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None

"""The tensor-parallel hooks, registered beside the plugin's own when ``--decodeperf`` is given (``hooks.configure``).

In a session that starts its ranks: the plan of its tp>1 items after collection, and each of them run on the
ranks instead of here (``launcher.py``). In a rank of a launch: each marked item's setup and call outcome agreed
with every rank, and no test body where this rank sat the item out (``ranks.py``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from ..protocol import item_param

if TYPE_CHECKING:
    from ..engine.spec.variants import Variant
    from ..records import ResultRecord
    from ..session import DecodePerfSession
    from .launcher import RankWorkers
    from .ranks import RankSession


def _variant(item: pytest.Item) -> Variant | None:
    param = item_param(item)
    return param[0] if param is not None else None


def _feed_benchmark(item: pytest.Item, record: ResultRecord) -> None:
    """pytest-benchmark gets the ranks' rounds as it gets a local item's (the item had no fixtures here)."""
    bs = getattr(item.config, "_benchmarksession", None)
    if bs is None or bs.disabled or bs.skip or not isinstance(item, pytest.Function):
        return
    from pytest_benchmark.fixture import BenchmarkFixture

    from ..benchmark_support import feed_pytest_benchmark

    add, warn = bs.benchmarks.append, item.warn
    item.funcargs["benchmark"] = BenchmarkFixture(  # type: ignore[no-untyped-call]
        item, add_stats=add, logger=bs.logger, warner=warn, disabled=bs.disabled, **bs.options
    )
    feed_pytest_benchmark(item, record)


class TensorParallelPlugin:
    def __init__(self, session: DecodePerfSession):
        self.session = session
        self.ranks: RankSession | None = None  # this process is a rank of a launch (hooks.configure joined it)
        self.launcher: RankWorkers | None = None  # the ranks this session starts for its tp>1 items

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """This session's tp>1 items by size, for the ranks it will start (none under a launcher: it is a rank)."""
        if self.ranks is not None or session.config.option.collectonly or self.session.settings.ab is not None:
            return  # under the A/B, tp>1 items are skipped (plugin.py)
        plan: dict[int, list[str]] = {}
        files: set[str] = set()
        for item in session.items:
            if (variant := _variant(item)) is not None and variant.tp > 1:
                plan.setdefault(variant.tp, []).append(item.nodeid)
                files.add(str(item.path))
        if plan:
            from .launcher import RankWorkers

            self.launcher = RankWorkers(session.config, self.session.settings, plan, sorted(files))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        """A tp>1 item of a session that starts its own ranks runs on them: their reports are its own."""
        variant = _variant(item)
        if self.launcher is None or variant is None or variant.tp == 1:
            return None
        records = self.launcher.protocol(item, variant.tp)
        self.session.add_records(records)
        if records:
            _feed_benchmark(item, records[-1])
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report = yield
        ranks = self.ranks
        if ranks is not None and call.when in ("setup", "call") and _variant(item) is not None:
            ranks.agree(item, report)
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        """A rank that sat an item out (tp=1 runs on rank 0 alone) has no result to give its body."""
        variant, ranks = _variant(pyfuncitem), self.ranks
        return True if ranks is not None and variant is not None and not ranks.runs(variant) else None

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        for part in (self.launcher, self.ranks):
            if part is not None:
                part.close()

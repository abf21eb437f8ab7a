"""The A/B's hooks, registered beside the plugin's own when ``--decodeperf-ab`` is given (``configure``).

The controller's session measures nothing itself: after collection it starts the process pairs (``session.py``),
runs all of them before any item reports, and each marked item then passes or fails on its verdict, its body not
run (it has no model here, only a verdict). The verdicts go to the terminal and ``--decodeperf-json``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import DecodePerfError
from ..protocol import item_param

if TYPE_CHECKING:
    from ..session import DecodePerfSession
    from .session import ABSession


def configure(config: pytest.Config, dp: DecodePerfSession) -> None:
    """Register the A/B's hooks for this session (refusals in one line: xdist, a bad REF or gate)."""
    if getattr(config, "workerinput", None) is not None or config.getoption("numprocesses", None):
        raise pytest.UsageError("pytest-decodeperf: --decodeperf-ab runs its own two workers; drop -n (xdist)")
    from .session import ABSession

    try:
        ab = ABSession(dp.settings, config.rootpath, dp.device.type)
    except DecodePerfError as exc:
        raise pytest.UsageError(f"pytest-decodeperf: {exc}") from None
    config.pluginmanager.register(ABPlugin(ab, dp), "decodeperf-ab")


class ABPlugin:
    def __init__(self, ab: ABSession, dp: DecodePerfSession):
        self.ab = ab
        self.dp = dp

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            param = item_param(item)
            if param is not None and param[0].tp > 1:
                item.add_marker(pytest.mark.skip(reason="--decodeperf-ab does not A/B tensor-parallel variants yet"))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        marked = [item.nodeid for item in session.items if (p := item_param(item)) is not None and p[0].tp == 1]
        try:
            self.ab.start(session.config, session.items, marked)
        except DecodePerfError as exc:
            raise pytest.UsageError(f"pytest-decodeperf: {exc}") from None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Every process pair runs before the items report (each looks its verdict up)."""
        if session.config.option.collectonly:
            return
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            return  # collection failed: pytest stops before any item, so nothing would read a verdict
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        progress = (lambda line: reporter.write_line(line)) if reporter is not None else (lambda line: None)
        self.ab.run_all(progress)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        verdict = self.ab.verdict(item.nodeid) if item_param(item) is not None else None
        result = yield
        if verdict is not None and verdict.failed:
            pytest.fail(f"A/B against {self.ab.sides.against}: {verdict.line()}", pytrace=False)
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        """The body is not run in the controller: it has no model, only a verdict."""
        return True if item_param(pyfuncitem) is not None else None

    @pytest.hookimpl(tryfirst=True)  # before the plugin's own table
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines = self.ab.summary()
        if lines:
            terminalreporter.write_sep("=", "decode perf A/B")
            for line in lines:
                terminalreporter.write_line(line)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        path = self.dp.settings.json
        if self.ab.records() and path is not None:
            self.dp.write_json(path, ab=self.ab.records())
            self.dp.messages.append(f"decode perf A/B verdicts written to {path}")

    def pytest_unconfigure(self) -> None:
        self.ab.close()

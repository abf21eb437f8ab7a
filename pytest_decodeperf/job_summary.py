"""The Markdown report's hooks (``markdown.py`` renders it): its own plugin, ``decodeperf-markdown``.

Registered at configure with ``--decodeperf`` in the process that reports: never on a pytest-xdist worker (the
controller sees every item's report and holds every record), and blocked in an A/B side's worker
(``ab/session.py`` passes ``-p no:decodeperf-markdown``: a worker inherits ``GITHUB_STEP_SUMMARY``). A user turns it
off the same way. It keeps the first failure of each ``decode_perf`` item as the items report, and writes once
every other end of the run is done (the history gate's verdict on the exit status included): to
``--decodeperf-markdown=PATH``, replaced, and appended to ``$GITHUB_STEP_SUMMARY`` when that is set. A write that
fails, or a report that cannot be rendered, is one line and fails the session; nothing else here changes it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .atomic import write_text_atomic
from .collection import MARKER
from .errors import DecodePerfError
from .options import OPTIONS

if TYPE_CHECKING:
    from .markdown import Failure, Report
    from .records import ABRecord
    from .session import DecodePerfSession

NAME = "decodeperf-markdown"
STEP_SUMMARY = "GITHUB_STEP_SUMMARY"
DEFAULTS = {spec.name: spec.default for spec in OPTIONS}
CHECK_PATH = next(spec.parse for spec in OPTIONS if spec.name == "markdown")


def _changed(name: str, value: object, text: str) -> list[str]:
    """``--decodeperf-NAME=TEXT`` where the session's value is not the default (the repro then times the same)."""
    return [f"--decodeperf-{name}={text}"] if value != DEFAULTS[name] else []


def configure(config: pytest.Config, dp: DecodePerfSession) -> None:
    """Check where the report goes (one line at configure, as for ``--decodeperf-json``), then register the hooks."""
    if getattr(config, "workerinput", None) is not None or config.pluginmanager.is_blocked(NAME):
        return  # an xdist worker (the controller reports), or -p no:decodeperf-markdown
    summary = os.environ.get(STEP_SUMMARY)
    if summary:
        try:
            CHECK_PATH(summary)  # the check --decodeperf-markdown=PATH gets
        except DecodePerfError as exc:
            raise pytest.UsageError(f"pytest-decodeperf: {exc} (from environment variable {STEP_SUMMARY})") from None
    config.pluginmanager.register(MarkdownPlugin(dp), NAME)  # returns None, registering nothing, when blocked


def first_line(report: pytest.TestReport) -> str:
    """The failure's message as one line (``pytest.fail``'s text, else the exception's), at most 400 characters."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(getattr(crash, "message", None) or report.longreprtext or report.outcome)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()] or [report.outcome]
    line = lines[0].removeprefix("Failed: ")
    return (f"{report.when}: " if report.when != "call" else "") + (line[:397] + "..." if len(line) > 400 else line)


class MarkdownPlugin:
    def __init__(self, dp: DecodePerfSession):
        self.dp = dp
        self.failed: dict[str, str] = {}  # nodeid -> the first failure's line, in the order items failed

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and MARKER in report.keywords and report.nodeid not in self.failed:
            self.failed[report.nodeid] = first_line(report)

    def targets(self) -> list[tuple[Path, bool]]:
        """(path, append): ``--decodeperf-markdown`` replaced, GitHub's step summary appended to."""
        out = [(self.dp.settings.markdown, False)] if self.dp.settings.markdown is not None else []
        summary = os.environ.get(STEP_SUMMARY)
        if summary and all(Path(summary).resolve() != path.resolve() for path, _ in out):
            out.append((Path(summary), True))
        return out

    @pytest.hookimpl(trylast=True)  # after the session's end (history, its verdict) and the A/B's
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.dp.reporter or not self.targets():
            return
        from .markdown import render

        try:
            report = self.report(session)
            text = render(report)
            for path, append in self.targets():
                if append and report.empty:
                    continue  # nothing measured: keep a CI step's summary for what it did
                before = path.read_text(encoding="utf-8") if append and path.exists() else ""
                write_text_atomic(path, before + ("\n" if before and not before.endswith("\n") else "") + text)
                self.dp.messages.append(f"decode perf Markdown report written to {path}")
        except Exception as exc:  # its own failure: one line, and the session fails on it
            self.dp.messages.append(f"decode perf: the Markdown report was not written: {type(exc).__name__}: {exc}")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def report(self, session: pytest.Session) -> Report:

        dp, config = self.dp, session.config
        ab_plugin: Any = config.pluginmanager.get_plugin("decodeperf-ab")
        ab: list[ABRecord] = ab_plugin.ab.records() if ab_plugin is not None else []
        lines: list[str] = ab_plugin.ab.summary() if ab_plugin is not None else []
        status = session.exitstatus
        from .markdown import Report

        return Report(
            title=f"pytest-decodeperf on {dp.device.type}",
            outcome={0: "passed", 1: "failed"}.get(int(status), f"exit status {int(status)}"),
            environment=dp.header().removeprefix("decodeperf: "),
            records=dp.records,
            failures=self.failures(config, ab),
            comparison=dp.comparison,
            ab=ab,
            ab_lines=[lines[0], lines[-1]] if lines else [],
            problems=[*dp.problems, *(f"not run: {note}" for note in dp.not_run)],
        )

    def failures(self, config: pytest.Config, ab: Sequence[ABRecord]) -> list[Failure]:
        """Each failing item with its repro command; then each item the history gate found worse, with the A/B
        against the history's reference commit (the history is one machine's; the A/B re-times both commits in one
        session on any machine, and fails the same way when the slowdown is real)."""
        from .markdown import Failure

        s = self.dp.settings
        a_commits = {rec["test"]: rec["a_commit"] for rec in ab}
        out = []
        for nodeid, message in self.failed.items():
            extra = self._ab_args(a_commits.get(nodeid) or s.ab or "") if s.ab is not None else []
            out.append(Failure(nodeid, message, self.command(config, nodeid, extra)))
        cmp = self.dp.comparison
        ref = cmp.ref if cmp is not None else None
        worse: dict[str, list[str]] = {}
        for row in cmp.regressions if cmp is not None and ref is not None else []:
            worse.setdefault(row.test, []).append(f"{row.benchmark.rsplit('.', 1)[-1]} x{row.ratio or 0:.2f}")
        for nodeid, metrics in worse.items():
            message = f"history: worse than {str(ref)[:8]}: {', '.join(metrics)}; confirm it alone with the A/B"
            command = self.command(config, nodeid, self._ab_args(str(ref))) if nodeid else None
            out.append(Failure(nodeid, message, command))
        return out

    def _ab_args(self, ref: str) -> list[str]:
        s = self.dp.settings
        return [
            f"--decodeperf-ab={ref}",
            *_changed("fail-on-regression", s.fail_on_regression, f"{s.fail_on_regression:g}"),
            *_changed("ab-processes", s.ab_processes, str(s.ab_processes)),
            *_changed("ab-max-pairs", s.ab_max_pairs, str(s.ab_max_pairs)),
        ]

    def command(self, config: pytest.Config, nodeid: str, extra: list[str]) -> str:
        """``pytest 'path::test[id]' --decodeperf ...``, runnable where this session was started: the worker
        command line (``workers.pytest_args``: the options that change the item's variants), the timing options
        that differ from their defaults, and ``extra``."""
        from .workers import pytest_args

        s = self.dp.settings
        path, sep, rest = nodeid.partition("::")
        node = os.path.relpath(config.rootpath / path, config.invocation_params.dir) + sep + rest
        args = pytest_args(config, s, self.dp.device.type)
        args += _changed("rounds", s.rounds, str(s.rounds)) + _changed("max-time", s.max_time, f"{s.max_time:g}")
        args += ["--decodeperf-tp=" + ",".join(map(str, s.tp))] if s.tp is not None else []
        return shlex.join(["pytest", node, *_once(args), *extra])


def _once(args: list[str]) -> list[str]:
    """``args`` without a repeated ``-p NAME`` (the worker line adds ``-p no:cacheprovider``; so may the user)."""
    out: list[str] = []
    seen: set[str] = set()
    pairs = iter(args)
    for arg in pairs:
        option = [arg, next(pairs, "")] if arg == "-p" else [arg]
        key = " ".join(option)
        if key not in seen or not key.startswith("-p"):
            out += option
        seen.add(key)
    return out

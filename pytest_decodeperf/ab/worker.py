"""One side of an A/B run: a pytest session in that side's tree that times rounds when the controller asks.

Run by file path (``python .../ab/worker.py R,W TREE -- PYTEST ARGS``), never imported from the
package at start: the tree goes first on ``sys.path``, so the user's conftest, model code and, when
the tree is pytest-decodeperf itself, its own engine and plugin are the ones that side has. The
worker collects the items it is given, puts them in the controller's order, sets each one up like
any test (every fixture, the user's autouse ones included) and then serves the controller:
``ready`` (warmed up, sync count attached) or ``error``; one ``round`` per request; ``done``.
The item's own measurement is then skipped: the controller judges, the worker only times.

Before its first warmup the worker pins itself to the CPUs the controller names
(``DECODEPERF_AB_CPUS``): both sides on the same cores, so a slow or busy core slows A and B alike.
A worker told ``DECODEPERF_AB_SYNCS=0`` does not count the syncs again (the first process pair
counted them: the count is exact).
This file imports nothing of the package at start (only pytest and the standard library): on side A
the package is REF's, which may be older than this script.

Messages are pickled tuples on two pipes the controller opened (``multiprocessing.connection``).
The first says what this side runs with (``environment``: the interpreter, Python's version and every
installed distribution's), so the verdict can name what differs when the sides run in two environments.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from collections.abc import Generator
from multiprocessing.connection import Connection
from typing import Any

import pytest

MESSAGES = 1  # the pipe conversation's version (pairs.py checks it); what the package offers is protocol.py's


class WorkerPlugin:
    def __init__(
        self,
        inbox: Connection,
        outbox: Connection,
        foreign: str | None = None,
        cpus: set[int] | None = None,
        count_syncs: bool = True,
    ):
        self.count_syncs = count_syncs
        self.inbox = inbox
        self.outbox = outbox
        self.foreign = foreign  # side A: the checkout, whose code this side must not import
        self.cpus = cpus  # pinned before the first warmup (not at start: collection may use every core)
        self.order: list[str] = []
        self.package: Any = None  # what this side's pytest-decodeperf offers a worker (``_package``)

    def _problems(self, package: Any) -> list[str]:
        """Why this side cannot be timed as its own tree (empty: it can)."""
        if package is None:
            where = getattr(sys.modules.get("pytest_decodeperf"), "__file__", None) or "not loaded"
            return [f"its pytest-decodeperf ({where}) predates --decodeperf-ab (no engine/paired.py)"]
        if self.foreign is None:
            return []
        top = os.path.abspath(self.foreign) + os.sep
        itself = os.path.abspath(__file__)  # this script (``__main__``, or ``__mp_main__`` once multiprocessing
        # is imported) is the checkout's by design: the harness, never the code under test
        borrowed = sorted(
            f"{name} ({path})"
            for name, module in list(sys.modules.items())
            if (path := getattr(module, "__file__", None))
            and os.path.abspath(path) != itself
            and os.path.abspath(path).startswith(top)
            and not os.path.abspath(path).startswith(sys.prefix + os.sep)  # a venv inside the checkout
        )
        if borrowed:
            return [
                f"it imported the checkout's code, not REF's: {', '.join(borrowed[:3])}"
                + (f" and {len(borrowed) - 3} more" if len(borrowed) > 3 else "")
                + " (a src layout or PYTHONPATH: A would time B's code)"
            ]
        return []

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        self.package = _package(config)
        problems = self._problems(self.package)
        marked = {} if problems else {item.nodeid: item for item in items if self.package.item_param(item) is not None}
        self.outbox.send(("collected", MESSAGES, sorted(marked), problems))
        kind, order = self.inbox.recv()
        assert kind == "order"
        self.order = [nodeid for nodeid in order if nodeid in marked]
        deselected = [item for item in items if item.nodeid not in set(self.order)]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = [marked[nodeid] for nodeid in self.order]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # An item whose setup failed or was skipped never reaches the call phase: tell the controller.
        if report.when == "setup" and not report.passed and report.nodeid in self.order:
            text = str(report.longrepr).strip().splitlines() if report.longrepr else []
            reason = text[-1] if text else report.outcome
            self.outbox.send(("error", report.nodeid, f"setup {report.outcome}: {reason}"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        if self.package is not None and item.nodeid in self.order:
            self._serve(item)
            self.package.drop_model(item)  # the controller judges: the item does not measure itself
        return (yield)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        """The body is not run here either: it would see no measured result."""
        return True if pyfuncitem.nodeid in self.order else None

    def _serve(self, item: pytest.Item) -> None:
        try:
            rounds = self.package.paired_rounds(item)
            if self.cpus:
                _pin(self.cpus)
                self.cpus = None
            rounds.warm()
            syncs = rounds.syncs_per_step() if self.count_syncs else None
        except Exception as exc:  # one line back to the controller, the whole trace in this side's log
            traceback.print_exc()
            self.outbox.send(("error", item.nodeid, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            return
        self.outbox.send(("ready", item.nodeid, {"syncs_per_step": syncs}))
        try:
            self._rounds(item, rounds)
        finally:
            close = getattr(rounds, "close", None)  # a package from before it kept nothing running
            if callable(close):
                close()

    def _rounds(self, item: pytest.Item, rounds: Any) -> None:
        """One timed round per request of the controller's, until it says done."""
        while True:
            message = self.inbox.recv()
            if message[0] == "done":
                return
            try:
                self.outbox.send(("round", item.nodeid, rounds.round()))
            except Exception as exc:
                traceback.print_exc()
                self.outbox.send(("error", item.nodeid, f"{type(exc).__name__}: {exc}".splitlines()[0]))
                return


class _ProtocolV1:
    """Protocol version 1 (``pytest_decodeperf/protocol.py`` describes both): a package from before that module,
    whose plugin module held ``MODEL_KEY``, ``_item_param`` and ``_session``."""

    def __init__(self, plugin: Any):
        self.plugin = plugin

    def item_param(self, item: pytest.Item) -> Any:
        return self.plugin._item_param(item)

    def drop_model(self, item: pytest.Item) -> None:
        if self.plugin.MODEL_KEY in item.stash:
            del item.stash[self.plugin.MODEL_KEY]

    def paired_rounds(self, item: pytest.Item) -> Any:
        from pytest_decodeperf.engine.paired import PairedRounds

        variant, _parity = self.plugin._item_param(item)
        return PairedRounds(self.plugin._session(item.config).runner, item.stash[self.plugin.MODEL_KEY], variant)


def _package(config: pytest.Config) -> Any:
    """This side's pytest-decodeperf as a worker reads it: its ``protocol`` module (version 2 on), the plugin
    module's own names (version 1), or None (a package from before the A/B).

    Read off the plugin module this session loaded, never imported by name: an editable install's finder would
    hand an older package the checkout's ``protocol`` module, whose keys that package never set.
    """
    plugin = config.pluginmanager.get_plugin("decodeperf") or sys.modules.get("pytest_decodeperf.plugin")
    if plugin is None:
        return None
    protocol = getattr(plugin, "protocol", None)
    if protocol is not None and getattr(protocol, "PROTOCOL", 0) >= 2:
        return protocol
    if not hasattr(plugin, "MODEL_KEY") or not hasattr(plugin, "_item_param"):
        return None
    if importlib.util.find_spec("pytest_decodeperf.engine.paired") is None:
        return None
    return _ProtocolV1(plugin)


def _cpus(name: str) -> set[int] | None:
    text = os.environ.pop(name, "")
    return {int(c) for c in text.split(",") if c.strip()} or None


def _pin(cpus: set[int]) -> None:
    """Every thread of this process onto ``cpus`` (Linux pins per thread: torch's pool already exists)."""
    if not hasattr(os, "sched_setaffinity"):
        return
    tasks = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
    for tid in tasks:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that ended meanwhile


def _environment() -> dict[str, Any]:
    """This interpreter and the version of every distribution it can import (what an A/B across environments
    names when the sides differ); a distribution shadowed by an earlier one on ``sys.path`` is not counted."""
    import importlib.metadata
    import platform

    versions = {"python": platform.python_version()}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name and name not in versions:
            versions[name] = dist.version
    return {"executable": sys.executable, "versions": versions}


def main(argv: list[str]) -> int:
    fds, tree, sep, *pytest_args = argv
    assert sep == "--"
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # not this folder's modules
    sys.path.insert(0, tree)
    os.chdir(tree)
    read_fd, write_fd = (int(fd) for fd in fds.split(","))
    for fd in (read_fd, write_fd):
        os.set_inheritable(fd, False)  # a child process of a test must not hold the pipes open
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    outbox.send(("environment", _environment()))
    count_syncs = os.environ.pop("DECODEPERF_AB_SYNCS", "1") != "0"
    foreign = os.environ.pop("DECODEPERF_AB_FOREIGN", None)
    plugin = WorkerPlugin(inbox, outbox, foreign, _cpus("DECODEPERF_AB_CPUS"), count_syncs)
    code = int(pytest.main(pytest_args, plugins=[plugin]))
    try:
        outbox.send(("exit", code))
    except OSError:
        pass  # the controller is gone (it stopped early): nothing to tell
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

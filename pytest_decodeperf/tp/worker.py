"""One tensor-parallel rank the plugin started: a pytest session of the user's tree that runs items on command.

Run by file path (``python .../tp/worker.py R,W -- PYTEST ARGS``, through ``workers.py``) with the variables
torchrun would set (``engine/distributed.launch_env``), so inside it the plugin takes a launched rank's path
(``ranks.py``): it joins the process group and keeps in step with the other ranks item by item, exactly as under
torchrun. What this script adds is the conversation with the session that started it (``launcher.py``): which
items it collected (``collected``), the ones it is to run (``order``), one item at a time when told (``run``), its
reports and, from rank 0, the item's record back (``done``). The pipes closing ends the session.
"""

from __future__ import annotations

import os
import sys
from multiprocessing.connection import Connection
from typing import Any

import pytest


class RankWorkerPlugin:
    def __init__(self, inbox: Connection, outbox: Connection):
        self.inbox = inbox
        self.outbox = outbox
        self.order: list[str] = []
        self.reports: list[Any] = []

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        from pytest_decodeperf.protocol import item_param  # a rank runs the launcher's own package version

        marked = {item.nodeid: item for item in items if item_param(item) is not None}
        self.outbox.send(("collected", sorted(marked)))
        kind, order = self.inbox.recv()
        assert kind == "order"
        self.order = [nodeid for nodeid in order if nodeid in marked]
        keep = set(self.order)
        deselected = [item for item in items if item.nodeid not in keep]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = [marked[nodeid] for nodeid in self.order]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        config = self.config
        self.reports.append(config.hook.pytest_report_to_serializable(config=config, report=report))

    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        """Items run when the launcher says, one at a time, in its order (the next one's fixtures kept)."""
        items = {item.nodeid: item for item in session.items}
        from pytest_decodeperf.protocol import session as plugin_session

        records = plugin_session(session.config).records
        while True:
            try:
                message = self.inbox.recv()
            except (EOFError, OSError):
                return True  # the launcher is done with this rank
            nodeid = message[1]
            if message[0] != "run" or nodeid not in items:
                self.outbox.send(("done", nodeid, [], [], f"this rank has no item {nodeid}"))
                continue
            position = self.order.index(nodeid)
            nextitem = items[self.order[position + 1]] if position + 1 < len(self.order) else None
            self.reports, before = [], len(records)
            session.config.hook.pytest_runtest_protocol(item=items[nodeid], nextitem=nextitem)
            self.outbox.send(("done", nodeid, self.reports, records[before:], None))
            if session.shouldstop:
                return True


def main(argv: list[str]) -> int:
    fds, sep, *pytest_args = argv
    assert sep == "--"
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # not this folder's modules
    read_fd, write_fd = (int(fd) for fd in fds.split(","))
    for fd in (read_fd, write_fd):
        os.set_inheritable(fd, False)  # a child process of a test must not hold the pipes open
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    code = int(pytest.main(pytest_args, plugins=[RankWorkerPlugin(inbox, outbox)]))
    try:
        outbox.send(("exit", code))
    except OSError:
        pass  # the launcher is gone: nothing to tell
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Processes the plugin starts, and the one way to start them, talk to them and end them.

The A/B's sides and the tensor-parallel ranks (``tp/launcher.py``) are both child Python processes that run a
script of this package by its file path (so a child can put another tree first on ``sys.path``), each with two
pipes to the parent and a log file. Messages are pickled tuples (``multiprocessing.connection``). A
reply that does not come, a child that dies or a child that ends its session early raises
``WorkerGone`` with one line (its exit code and the last line of its log); ``recv_each`` waits for one
message from each of several children at once (ranks block on each other, so the one that died must be
noticed while the others wait); ``close_all`` closes every pipe first (a child waiting for orders reads EOF
and finishes), then reaps each child, terminating one that does not finish in time. Nothing is left running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .errors import DecodePerfError

if TYPE_CHECKING:
    import pytest

    from .options import Settings

REPLY_TIMEOUT_S = 1800.0  # a warmup with torch.compile on a big model can take minutes


class WorkerGone(DecodePerfError):
    """A child process died, ended early or fell silent: what it was doing cannot be finished."""


class WorkerProcess:
    """One child: ``python SCRIPT R,W ARGS...`` with two pipes (fds ``R`` and ``W`` on its side) and a log.

    ``python`` is this interpreter unless given: an A/B side may run in another environment (another venv,
    another torch or transformers), which is why the script is run by path and imports nothing at start.
    """

    def __init__(
        self,
        name: str,
        script: Path,
        args: Iterable[str],
        cwd: Path,
        log_path: Path,
        env: Mapping[str, str],
        reply_timeout_s: float = REPLY_TIMEOUT_S,
        python: str | None = None,
    ):
        self.name = name
        self.log_path = log_path
        self.reply_timeout_s = reply_timeout_s
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        cmd = [python or sys.executable, str(script), f"{to_child_r},{from_child_w}", *args]
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(to_child_r, from_child_w),
                env=dict(env),
            )
        os.close(to_child_r)
        os.close(from_child_w)  # the child's end: reading sees EOF once it exits
        self._out = Connection(to_child_w, readable=False)
        self._in = Connection(from_child_r, writable=False)

    def send(self, *message: Any) -> None:
        try:
            self._out.send(message)
        except OSError:
            raise WorkerGone(self.gone()) from None

    def recv(self) -> tuple[Any, ...]:
        """The next message; ``WorkerGone`` if the child exits first, says ``exit`` or stays silent too long."""
        deadline = time.monotonic() + self.reply_timeout_s
        while not self._in.poll(1.0):
            if self.proc.poll() is not None and not self._in.poll(0.1):
                raise WorkerGone(self.gone())
            if time.monotonic() > deadline:
                raise WorkerGone(f"{self.name} gave no answer in {self.reply_timeout_s:.0f} s ({self.log_path})")
        try:
            message: tuple[Any, ...] = self._in.recv()
        except (EOFError, OSError):
            raise WorkerGone(self.gone()) from None
        if message[0] == "exit":  # its session ended before the parent was done with it
            raise WorkerGone(self.gone())
        return message

    def gone(self) -> str:
        """One line: how the child ended and the last line it logged."""
        try:
            code: int | str = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = "still running"
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        tail = [line for line in text.splitlines() if line.strip()][-1:]
        last = f": {tail[0].strip()}" if tail else ""
        return f"{self.name}'s process exited ({code}){last} (whole log: {self.log_path})"

    def close_pipes(self) -> None:
        for conn in (self._out, self._in):
            conn.close()

    def reap(self, timeout_s: float = 10.0) -> None:
        """Wait a little for the child to finish, then terminate it, then kill it."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def recv_each(workers: Sequence[WorkerProcess]) -> list[tuple[Any, ...]]:
    """One message from each worker, in the workers' order, whatever order they come in.

    ``WorkerGone`` as soon as any worker exits, ends its session early or all stay silent past the reply
    timeout: the others may be blocked waiting for the one that died (a collective), so it is noticed while
    they wait, not after.
    """
    pending = {worker._in: i for i, worker in enumerate(workers)}
    out: list[tuple[Any, ...]] = [()] * len(workers)
    deadline = time.monotonic() + max((w.reply_timeout_s for w in workers), default=0.0)
    while pending:
        for conn in wait(list(pending), timeout=1.0):
            index = pending.pop(cast(Connection, conn))  # wait() returns the connections it was given
            out[index] = workers[index].recv()
        for conn, index in list(pending.items()):
            worker = workers[index]
            if worker.proc.poll() is not None and not conn.poll(0.1):
                raise WorkerGone(worker.gone())
        if pending and time.monotonic() > deadline:
            names = ", ".join(workers[i].name for i in pending.values())
            raise WorkerGone(f"{names} gave no answer in {workers[0].reply_timeout_s:.0f} s")
    return out


def close_all(workers: Iterable[WorkerProcess]) -> None:
    """Every pipe first (a child still waiting reads EOF and exits), then every process."""
    workers = list(workers)
    for worker in workers:
        worker.close_pipes()
    for worker in workers:
        worker.reap()


def child_env(drop_prefixes: tuple[str, ...] = (), extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child: without variables that would make it recurse, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not (drop_prefixes and k.startswith(drop_prefixes))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


FORWARDED = ("-p", "-o", "--override-ini", "--import-mode")


def forwarded(args: tuple[str, ...] | list[str]) -> list[str]:
    """The options of the controller's command line that change how a tree is collected and imported."""
    out: list[str] = []
    it = iter(args)
    for arg in it:
        name, eq, _ = arg.partition("=")
        if name in FORWARDED and eq:
            option = [arg]
        elif arg in FORWARDED:
            option = [arg, next(it, "")]
        elif arg.startswith("-p") and len(arg) > 2:
            option = [arg]
        else:
            continue
        value = option[-1]
        for prefix in ("--override-ini", "-o"):
            value = value.removeprefix(prefix)
        if not value.lstrip("=").startswith("decodeperf_ab"):  # a worker never starts an A/B of its own
            out += option
    return out


def pytest_args(config: pytest.Config, settings: Settings, device: str) -> list[str]:
    """A worker's pytest command line, an A/B side's or a rank's alike: it expands the same variants as this
    session (the options that change them forwarded), in one process, and writes nothing; callers add theirs."""
    s = settings
    args = ["-p", "no:cacheprovider", "-q", "--decodeperf"]
    args += [f"--decodeperf-device={device}", f"--decodeperf-warmup={s.warmup}"]
    if s.threads is not None:
        args.append(f"--decodeperf-threads={s.threads}")
    if s.new_tokens is not None:
        args.append(f"--decodeperf-new-tokens={s.new_tokens}")
    if s.prompt_lens is not None:
        args.append("--decodeperf-prompt-lens=" + ",".join(str(n) for n in s.prompt_lens))
    if s.dtype is not None:
        args.append(f"--decodeperf-dtype={s.dtype}")
    if s.attn is not None:
        args.append("--decodeperf-attn=" + ",".join(s.attn))
    if s.model_path is not None:  # workers may run in other trees: the path must not be relative
        args.append(f"--decodeperf-model-path={os.path.abspath(s.model_path)}")
    if config.pluginmanager.hasplugin("xdist"):
        args += ["-p", "no:xdist"]  # one process per side or rank, never several
    if config.pluginmanager.hasplugin("benchmark"):
        args.append("--benchmark-disable")
    return [*args, *forwarded(config.invocation_params.args)]

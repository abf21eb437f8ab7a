"""``--decodeperf-ab`` (and ``-ab-python``) inside the controller's pytest session: the checks, the worktree,
the workers.

The plugin (``plugin.py``) calls these from its hooks; everything A/B-specific stands here so the
plugin stays a thin layer and loads nothing heavy when the option is not given.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ..errors import DecodePerfError
from ..options import Settings
from ..records import ABRecord
from ..workers import child_env, pytest_args
from .checkout import Sides, check_files_at_ref, check_options_at_ref, resolve_sides, worktree
from .controller import ABRun, ItemVerdict
from .environment import check_interpreter


class ABSession:
    def __init__(self, settings: Settings, rootdir: Path, device: str):
        self.settings = settings
        self.device = device
        # raises DecodePerfError: one line
        self.sides: Sides = resolve_sides(rootdir, settings.ab, settings.ab_python)
        self.threshold = settings.fail_on_regression / 100.0
        if not self.threshold > 0.0:
            raise DecodePerfError(
                f"--decodeperf-ab needs a gate above 0%, got --decodeperf-fail-on-regression "
                f"{settings.fail_on_regression:g}"
            )
        self._stack = contextlib.ExitStack()
        self.run: ABRun | None = None
        self.not_at_ref: set[str] = set()

    def _worker_args(self, config: pytest.Config, files: list[str]) -> list[str]:
        """Both sides collect the same files (not node ids: one REF lacks would stop pytest there)."""
        args = ["--continue-on-collection-errors"]
        # a worker never starts an A/B of its own (the ini may ask for one), nor writes a report (it inherits
        # GITHUB_STEP_SUMMARY)
        args += ["-o", "decodeperf_ab=", "-o", "decodeperf_ab_python=", "-p", "no:decodeperf-markdown"]
        return [*pytest_args(config, self.settings, self.device), *args, *files]

    def start(self, config: pytest.Config, items: list[pytest.Item], marked: list[str]) -> None:
        """Worktree of REF, both workers, the shared order; items REF lacks are skipped with a reason."""
        if not marked or config.option.collectonly:
            return
        files = [Path(str(item.path)) for item in items if item.nodeid in marked]
        try:
            tree = self.sides.top if self.sides.same_code else self._stack.enter_context(worktree(self.sides))
            check_files_at_ref(self.sides, tree, files)
            rel_files = sorted({str(f.resolve().relative_to(self.sides.rootdir)) for f in files})
            args = self._worker_args(config, rel_files)
            check_options_at_ref(self.sides, tree, args)
            if self.sides.python is not None:
                tree_a = tree / self.sides.rootdir.relative_to(self.sides.top)
                check_interpreter(self.sides.python, tree_a, child_env(("DECODEPERF_AB",)))
            s, cpus = self.settings, self._cpus()
            self.run = ABRun(self.sides, tree, self.threshold, s.ab_max_pairs, s.ab_processes, args, cpus)
            self._stack.callback(self.run.close)
            labels = {item.nodeid: item.name for item in items}
            self.not_at_ref, why = self.run.start(marked, labels)
        except BaseException:
            self.close()
            raise
        reason = f"{why or f'not at REF {self.sides.ref} ({self.sides.a_commit[:8]})'}: nothing to compare with"
        for item in items:
            if item.nodeid in self.not_at_ref:
                item.add_marker(pytest.mark.skip(reason=reason))

    def _cpus(self) -> tuple[int, ...] | None:
        """The cores both sides are pinned to: the last ``threads`` this process may use (None: not pinned).

        The same cores for A and B, so neither side gets the quieter core; not pinned where the thread
        count is torch's own (CUDA by default) or the platform cannot pin.
        """
        threads = self.settings.threads or (1 if self.device == "cpu" else None)
        if threads is None or not hasattr(os, "sched_getaffinity"):
            return None
        allowed = sorted(os.sched_getaffinity(0))
        return tuple(allowed[-threads:]) if len(allowed) >= threads else None

    def run_all(self, progress: Callable[[str], None]) -> None:
        """Every process pair, before the items report (they look their verdicts up)."""
        if self.run is not None and self.run.items:
            self.run.run(progress)

    def verdict(self, nodeid: str) -> ItemVerdict | None:
        if self.run is None or nodeid in self.not_at_ref:
            return None
        return self.run.verdict(nodeid)

    def records(self) -> list[ABRecord]:
        return self.run.records() if self.run is not None else []

    def summary(self) -> list[str]:
        return self.run.summary() if self.run is not None and self.run.items else []

    def close(self) -> None:
        self._stack.close()

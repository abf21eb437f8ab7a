"""The plugin's session: runs each marked item's variant, keeps the records, and reports them.

Imported by the plugin in every pytest session, so the engine (torch, transformers) is imported
only when a run needs it.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from .atomic import write_json_atomic
from .errors import DecodePerfError
from .options import Settings
from .records import ABRecord, MachineInfo, ResultRecord
from .report import render_table
from .xdist_support import RECORDS_KEY

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from .engine.parallel.distributed import RankEnv, RankGroup
    from .engine.results import VariantResult
    from .engine.runner import Runner
    from .engine.spec.variants import Variant
    from .history.compare import Comparison


class Rank(Protocol):
    """This process as one rank of a launch (``tp/ranks.py``), as the session sees it."""

    env: RankEnv
    group: RankGroup | None

    @property
    def reporter(self) -> bool: ...

    def runs(self, variant: Variant) -> bool: ...


@dataclass
class ItemOutcome:
    """What happened to one marked item; read again in the call phase to pass or fail it."""

    variant: Variant
    parity_required: bool
    max_syncs_per_step: int | None = None
    result: VariantResult | None = None
    error: str | None = None


@dataclass
class DecodePerfSession:
    settings: Settings
    records: list[ResultRecord] = field(default_factory=list)
    outcomes: dict[str, ItemOutcome] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    _runner: Runner | None = None
    _device: torch.device | None = None
    _canary_ms: float | None = None
    _canary_samples: list[float] = field(default_factory=list)
    ranks: Rank | None = None  # this process is one rank of a launch (tp/ranks.py)
    not_run: list[str] = field(default_factory=list)  # variants an option could not add, and why
    comparison: Comparison | None = None  # the history gate's, once history() ran (markdown.py renders it)
    problems: list[str] = field(default_factory=list)  # what stopped a part of the run's end (markdown.py)
    _fingerprint: dict[str, str] | None = None

    @property
    def delegated(self) -> bool:
        """Whether the items are measured elsewhere (the A/B's workers), not in this process."""
        return self.settings.ab is not None or self.settings.ab_python is not None

    @property
    def reporter(self) -> bool:
        """Whether this process prints the table and writes results: not a rank other than the launch's rank 0."""
        return self.ranks is None or self.ranks.reporter

    @property
    def device(self) -> torch.device:
        if self._device is None:
            from .engine.device.machine import resolve_device

            self._device = resolve_device(self.settings.device)
        return self._device

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            from .engine.measure.nvtx import Tracer
            from .engine.runner import Runner

            tracer = Tracer(self.settings.nvtx, self.settings.profile_steps, self.device)
            s = self.settings
            group = self.ranks.group if self.ranks is not None else None
            self._runner = Runner(
                self.device, s.rounds, s.warmup, tracer, threads=self.threads, max_time_s=s.max_time, ranks=group
            )
        return self._runner

    @property
    def threads(self) -> int | None:
        """The torch threads measurements pin: the option, else 1 on CPU (steady on a shared machine)."""
        return self.settings.threads or (1 if self.device.type == "cpu" else None)

    def time_canary(self) -> float:
        """Time the drift canary now (at the run's start and end, when history is kept) and keep the figure."""
        from .engine.device.machine import drift_canary_ms

        self._canary_samples.append(drift_canary_ms(self.device, self.threads))
        self._canary_ms = statistics.median(self._canary_samples)
        return self._canary_samples[-1]

    @property
    def wants_history(self) -> bool:
        return (self.settings.asv is not None or self.settings.compare is not None) and self.reporter

    def machine(self) -> MachineInfo:
        from .engine.device.machine import machine_info

        bandwidth = self._runner.measured_bandwidth if self._runner is not None else None
        gb_per_s = bandwidth / 1e9 if bandwidth else None
        return machine_info(self.device, self.threads, gb_per_s, self._canary_ms)

    @property
    def fingerprint(self) -> dict[str, str]:
        """What this process's numbers depend on beyond the code (``fingerprint.py``), kept in each record."""
        if self._fingerprint is None:
            from .fingerprint import of

            self._fingerprint = of(self.machine())
        return self._fingerprint

    def header(self) -> str:
        """One line for pytest's header: what every number of this run depends on."""
        info = self.machine()
        gpu = f" ({info.get('gpu_name')})" if info.get("gpu_name") else ""
        group = self.ranks.group if self.ranks is not None else None
        rank = f", rank {group.rank} of {group.world_size} ({group.env.launcher}, {group.backend})" if group else ""
        return (
            f"decodeperf: device {info.get('device')}{gpu}, torch {info.get('torch')}, "
            f"transformers {info.get('transformers')}, {info.get('threads')} torch threads, cpu {info.get('cpu')}{rank}"
        )

    def run_item(self, nodeid: str, outcome: ItemOutcome, model: PreTrainedModel) -> None:
        """Measure the item's variant; errors are kept so the call phase fails with one line."""
        self.outcomes[nodeid] = outcome
        variant = outcome.variant
        window = self.settings.profile_steps
        if window is not None and window[1] > variant.new_tokens:
            outcome.error = (
                f"profile window {window[0]}:{window[1]} ends after the run's last step "
                f"({variant.new_tokens} new tokens)"
            )
            return
        import torch

        if self.wants_history and not self._canary_samples:
            self.time_canary()  # the machine's speed as the run starts: compare.py bounds its move with it
        try:
            result = self.runner.run(
                variant, model, parity=outcome.parity_required, max_syncs_per_step=outcome.max_syncs_per_step
            )
        except torch.OutOfMemoryError as exc:
            self.runner.release()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
            outcome.error = f"out of memory in {variant.id}: {first}"
            return
        except DecodePerfError as exc:
            outcome.error = str(exc)
            return
        outcome.result = result
        record = result.record(nodeid)
        record["fingerprint"] = dict(self.fingerprint)
        self.records.append(record)

    def add_records(self, records: list[ResultRecord]) -> None:
        """Records measured elsewhere (an xdist worker)."""
        self.records.extend(records)

    def summary(self) -> str:
        return render_table(self.records, title=f"pytest-decodeperf on {self.records[0]['device']}")

    def write_json(self, path: Path, ab: list[ABRecord] | None = None) -> None:
        """``{"machine": ..., "results": [...]}``; under the A/B ``{"machine": ..., "ab": [...]}`` (records.py)."""
        body = (
            {"machine": self.machine(), "results": self.records}
            if ab is None
            else {"machine": self.machine(), "ab": ab}
        )
        write_json_atomic(path, body)

    def asv_results_dir(self) -> Path:
        """Where history lives: --decodeperf-asv=PATH, else asv.conf.json's results_dir."""
        from .history.config import read_asv_conf

        if self.settings.asv:
            return Path(self.settings.asv)
        return read_asv_conf(self.settings.asv_config).results_dir

    def history(self, rootdir: Path) -> bool:
        """Compare with history (if asked), then add this run to it (if asked). False: a regression."""
        from .history.compare import compare_with_history
        from .history.config import current_commit
        from .history.render import render_table
        from .history.storage import write_history

        commit = current_commit(rootdir)
        results_dir = self.asv_results_dir()
        self.time_canary()  # and as it ends
        for rec in self.records:
            rec["canary_ms"] = self._canary_ms
            rec["canary_samples_ms"] = list(self._canary_samples)
        ok = True
        if self.settings.compare is not None:
            ref = None if self.settings.compare == "latest" else self.settings.compare
            cmp = compare_with_history(
                self.records,
                results_dir,
                ref=ref,
                current_commit=commit,
                fail_pct=self.settings.fail_on_regression,
                repo_dir=rootdir,
            )
            self.comparison = cmp
            self.messages.append(render_table(cmp))
            ok = not cmp.failed
            if cmp.failed:
                self.messages.append(
                    f"decode perf: {len(cmp.regressions)} significant regression(s) worse by more than "
                    f"{self.settings.fail_on_regression:g}%: failing the session"
                )
        if self.settings.asv is not None:
            if commit is None:
                self.messages.append(
                    f"decode perf: {rootdir} is not a git checkout: asv files results by commit, so this run "
                    "was not added to the history (the tests ran as usual)"
                )
            else:
                paths = write_history(self.records, self.machine(), results_dir, commit, repo_dir=rootdir)
                self.messages += [f"decode perf history written to {p}" for p in paths]
        return ok

    # --- the end of a run ---------------------------------------------------------------------------------------

    def display(self, terminalreporter: Any) -> None:
        """The table, then every message of the run (written by the reporting process only)."""
        if not self.reporter:
            return
        if self.records:
            terminalreporter.write_sep("=", "decode perf")
            terminalreporter.write_line(self.summary())
        for message in [*self.messages, *(f"decode perf: not run: {note}" for note in self.not_run)]:
            terminalreporter.write_line(message)

    def finish(self, session: pytest.Session) -> None:
        """Everything a run leaves behind: an xdist worker's records handed over, or the JSON, the history (and its
        verdict on the exit status) and the plots."""
        config = session.config
        workeroutput = getattr(config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: hand records to the controller
            workeroutput[RECORDS_KEY] = json.dumps(self.records)
            return
        if not self.reporter or not self.records:
            return  # rank 0 of a launch writes; an A/B controller wrote its verdicts (ab/plugin.py)
        if self.settings.json is not None:
            self.write_json(self.settings.json)
            self.messages.append(f"decode perf results written to {self.settings.json}")
        if self.settings.asv is not None or self.settings.compare is not None:
            try:
                if not self.history(config.rootpath):
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
            except DecodePerfError as exc:
                self.problems.append(f"asv history: {exc}")
                self.messages.append(f"decode perf: asv history: {exc}")
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.settings.plot is not None:
            from .plots import write_plots

            self.settings.plot.mkdir(parents=True, exist_ok=True)
            for path in write_plots(self.records, self.settings.plot):
                self.messages.append(f"decode perf plot written to {path}")

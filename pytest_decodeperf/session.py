"""The plugin's session: runs each marked item's variant, keeps the records, and reports them.

Imported by the plugin in every pytest session, so the engine (torch, transformers) is imported
only when a run needs it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_json_atomic
from .errors import DecodePerfError
from .options import Settings
from .records import ABRecord, MachineInfo, ResultRecord
from .report import render_table

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from .engine.results import VariantResult
    from .engine.runner import Runner
    from .engine.spec.variants import Variant
    from .tp.launcher import RankWorkers
    from .tp.ranks import RankSession


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
    ranks: RankSession | None = None  # this process is one rank of a launch (tp/ranks.py)
    launcher: RankWorkers | None = None  # the ranks this session started for its tp>1 items (tp/launcher.py)
    tp_notes: list[str] = field(default_factory=list)  # variants --decodeperf-tp could not add, and why

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
        self.records.append(result.record(nodeid))

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
        from .history.compare import compare_with_history, render_table
        from .history.config import current_commit
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

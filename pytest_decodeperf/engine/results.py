"""A measured variant: what the runner returns, and the JSON record it becomes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..records import ResultRecord
from .decode.loop import DecodeOutput
from .measure.profiling import ProfileStats
from .measure.rounds import UNSTABLE_PCT, Measurement
from .measure.syncs import SyncReport
from .parallel.tensor_parallel import TPInfo
from .parity.compare import ParityReport
from .roofline.variant import ROOFLINE_FIELDS, Roofline
from .spec.models import model_label
from .spec.variants import Variant
from .spec.workload import Workload

# A variant whose median (or paired ratio to its baseline) is not pinned within +-UNSTABLE_PCT at 95% is
# not a measurement but noise: the table marks it and never shows its ratio as a clean speedup (pyperf's
# "the benchmark seems unstable"). More rounds (--decodeperf-max-time) pin it; the spread does not shrink.


@dataclass
class VariantResult:
    """A measured variant: its measurement, its tokens, and its parity verdict against baseline."""

    variant: Variant
    device: torch.device
    workload: Workload
    measurement: Measurement
    parity: ParityReport | None  # None: baseline itself, or parity not asked for
    profile: ProfileStats | None = None  # CUDA only: syncs and GPU idle of one untimed generation
    roofline: Roofline | None = None
    syncs: SyncReport | None = None  # blocking reads per decode step, counted in one untimed generation
    threads: int | None = None  # torch threads while measuring
    tp: TPInfo | None = None  # None: one process, no ranks

    @property
    def output(self) -> DecodeOutput:
        return self.measurement.last

    @property
    def parity_verdict(self) -> str:
        if self.parity is None:
            return "n/a"
        return "pass" if self.parity.ok else "fail"

    def record(self, test: str | None = None) -> ResultRecord:
        m, v, out = self.measurement, self.variant, self.output
        roof = self.roofline.fields(m.ms_per_token) if self.roofline else dict.fromkeys(ROOFLINE_FIELDS)
        notes = [n for n in (out.note, self.roofline.note if self.roofline else "") if n]
        if self.syncs is None and not v.is_hf:
            notes.append("syncs not counted under torch.compile")
        s = self.syncs
        vs = m.vs_reference
        return ResultRecord(
            test=test or f"engine[{v.id}]",
            model=v.model,
            model_label=model_label(v.model),
            cache=v.cache,
            stream=v.stream,
            batch_size=v.batch_size,
            new_tokens=v.new_tokens,
            stop=v.stop,
            prompt_len=v.prompt_len,
            prompts=v.prompts,
            prompt_lengths=list(self.workload.prompt_lengths),
            compile=v.compile,
            dtype=v.dtype,
            device=self.device.type,
            parity=self.parity_verdict,
            tokens_per_s=m.tokens_per_s,
            ms_per_token=m.ms_per_token,
            prefill_ms=m.prefill_ms,
            steps=out.steps,
            extra_steps=out.extra_steps,
            generated_tokens=out.new_tokens,
            peak_allocated_bytes=m.peak("peak_allocated_bytes"),
            peak_reserved_bytes=m.peak("peak_reserved_bytes"),
            rounds=len(m.rounds),
            warmup_s=list(m.warmup_s),
            samples_s=[r.total_s for r in m.rounds],
            samples_ms_per_token=[r.ms_per_token for r in m.rounds],
            samples_prefill_ms=[1e3 * r.prefill_s for r in m.rounds if r.prefill_s is not None],
            ttft_ms=m.prefill_ms,
            itl_p50_ms=m.itl_ms(50),
            itl_p90_ms=m.itl_ms(90),
            itl_p99_ms=m.itl_ms(99),
            samples_itl_p90_ms=m.round_itl_ms(90),
            samples_itl_p99_ms=m.round_itl_ms(99),
            spread_pct=m.spread_pct,
            precision_pct=m.precision_pct,
            unstable=not m.precision_pct <= UNSTABLE_PCT,
            vs_baseline=vs[0] if vs else None,
            vs_baseline_low=vs[1] if vs else None,
            vs_baseline_high=vs[2] if vs else None,
            threads=self.threads if self.threads is not None else torch.get_num_threads(),
            note="; ".join(notes),
            stop_reads=out.host_reads,
            compiled_graphs=m.compile_stats.get("unique_graphs") if v.compile else None,
            graph_breaks=m.compile_stats.get("graph_breaks") if v.compile else None,
            syncs_per_token=self.profile.syncs_per_token if self.profile else None,
            draining_syncs_per_token=self.profile.draining_per_token if self.profile else None,
            syncs_per_step=s.hidden_per_step if s else None,
            max_syncs_per_step=s.max_hidden if s else None,
            flag_reads_per_step=s.declared_per_step if s else None,
            syncs_outside_steps=s.outside if s else None,
            sync_budget=s.budget if s else None,
            sync_sites=list(s.sites) if s else [],
            gpu_idle_fraction=self.profile.idle.fraction if self.profile else None,
            gpu_idle_us_per_step=self.profile.idle_us_per_step if self.profile else None,
            bytes_per_step=roof["bytes_per_step"],
            weight_bytes_per_step=roof["weight_bytes_per_step"],
            kv_bytes_per_step=roof["kv_bytes_per_step"],
            state_bytes_per_step=roof["state_bytes_per_step"],
            weight_bytes_resident=roof["weight_bytes_resident"],
            active_experts_per_step=roof["active_experts_per_step"],
            routed_experts=roof["routed_experts"],
            bandwidth_gb_per_s=roof["bandwidth_gb_per_s"],
            floor_ms_per_step=roof["floor_ms_per_step"],
            achieved_gb_per_s=roof["achieved_gb_per_s"],
            bw_fraction=roof["bw_fraction"],
            times_floor=roof["times_floor"],
            kv_cache_bytes=roof["kv_cache_bytes"],
            kv_cache_bytes_analytic=roof["kv_cache_bytes_analytic"],
            kv_cache_allocated_bytes=roof["kv_cache_allocated_bytes"],
            generation_peak_bytes=m.generation_peak_bytes,
            canary_ms=None,
            canary_samples_ms=[],
            tp=self.tp.tp if self.tp else v.tp,
            world_size=self.tp.world_size if self.tp else 1,
            backend=self.tp.backend if self.tp else None,
            collectives_per_step=c.per_step if (c := self.tp.collectives if self.tp else None) else None,
            collective_bytes_per_step=c.bytes_per_step if c else None,
            collective_ops=dict(c.by_op) if c else {},
        )

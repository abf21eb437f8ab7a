"""Run and measure variants: the engine's front door, used by the plugin, asv and the CLI.

A ``Runner`` builds each zoo model once, makes each workload once, and keeps the baseline's
tokens per configuration so a variant's parity check never re-times anything.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from ..records import ResultRecord
from .caches import CacheSlot, get_cache
from .hf_generate import hf_generate
from .loop import DecodeOutput, generate
from .measure import Clock, Measurement, measure
from .models import build_model
from .nvtx import NULL_TRACER, Tracer
from .parity import ParityReport, check_parity
from .profiling import ProfileStats, compile_counters, profile_generation
from .roofline import MIB, StepBytes, achieved, cache_tensor_bytes, decode_bytes, measure_bandwidth, static_cache_bytes
from .stream_modes import get_stop_policy
from .syncs import SyncCounter, SyncReport, no_padding_check
from .syncs import report as sync_report
from .variants import Variant
from .workload import Workload, make_workload


@dataclass(frozen=True)
class Roofline:
    """What a decode step of the variant must move, and what the device can move (engine/roofline.py)."""

    step: StepBytes | None  # None: the config's KV layout is unknown to the analytic model (see note)
    bandwidth: float  # bytes/s, the device's measured copy bandwidth
    kv_cache_bytes: int | None = None  # static cache: its tensors' nbytes after the run
    kv_cache_bytes_analytic: int | None = None
    note: str = ""

    def fields(self, ms_per_step: float) -> dict[str, Any]:
        """The record's roofline fields; achieved figures are None without a finite decode time."""
        out: dict[str, Any] = {
            "bytes_per_step": self.step.total if self.step else None,
            "bandwidth_gb_per_s": self.bandwidth / 1e9,
            "floor_ms_per_step": None,
            "achieved_gb_per_s": None,
            "bw_fraction": None,
            "times_floor": None,
            "kv_cache_bytes": self.kv_cache_bytes,
            "kv_cache_bytes_analytic": self.kv_cache_bytes_analytic,
        }
        if self.step is not None:
            out["floor_ms_per_step"] = self.step.total / self.bandwidth * 1e3
            if ms_per_step > 0 and ms_per_step == ms_per_step:  # not NaN: there was a decode step
                gb_s, fraction, _ = achieved(self.step.total, ms_per_step, self.bandwidth)
                out["achieved_gb_per_s"], out["bw_fraction"] = gb_s, fraction
                out["times_floor"] = 1.0 / fraction if fraction > 0 else None
        return out


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
        return ResultRecord(
            test=test or f"engine[{v.id}]",
            model=v.model,
            cache=v.cache,
            stream=v.stream,
            batch_size=v.batch_size,
            new_tokens=v.new_tokens,
            stop=v.stop,
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
            spread_pct=m.spread_pct,
            note="; ".join(notes),
            stop_reads=out.host_reads,
            compiled_graphs=m.compile_stats.get("unique_graphs") if v.compile else None,
            graph_breaks=m.compile_stats.get("graph_breaks") if v.compile else None,
            syncs_per_token=self.profile.syncs_per_token if self.profile else None,
            syncs_per_step=s.hidden_per_step if s else None,
            max_syncs_per_step=s.max_hidden if s else None,
            flag_reads_per_step=s.declared_per_step if s else None,
            syncs_outside_steps=s.outside if s else None,
            sync_budget=s.budget if s else None,
            sync_sites=list(s.sites) if s else [],
            gpu_idle_fraction=self.profile.idle.fraction if self.profile else None,
            gpu_idle_us_per_step=self.profile.idle_us_per_step if self.profile else None,
            bytes_per_step=roof["bytes_per_step"],
            bandwidth_gb_per_s=roof["bandwidth_gb_per_s"],
            floor_ms_per_step=roof["floor_ms_per_step"],
            achieved_gb_per_s=roof["achieved_gb_per_s"],
            bw_fraction=roof["bw_fraction"],
            times_floor=roof["times_floor"],
            kv_cache_bytes=roof["kv_cache_bytes"],
            kv_cache_bytes_analytic=roof["kv_cache_bytes_analytic"],
        )


ROOFLINE_FIELDS = (
    "bytes_per_step",
    "bandwidth_gb_per_s",
    "floor_ms_per_step",
    "achieved_gb_per_s",
    "bw_fraction",
    "times_floor",
    "kv_cache_bytes",
    "kv_cache_bytes_analytic",
)


class Runner:
    """Measures variants on one device, caching models, workloads and baseline tokens."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        rounds: int = 5,
        warmup: int = 1,
        tracer: Tracer = NULL_TRACER,
        seed: int = 0,
        profile_gpu: bool = True,
    ):
        self.device = torch.device(device)
        self.rounds = rounds
        self.warmup = warmup
        self.tracer = tracer
        self.seed = seed
        self.profile_gpu = profile_gpu and self.device.type == "cuda"
        self._models: dict[tuple[str, str], PreTrainedModel] = {}
        self._compiled: dict[tuple[int, bool | str], Any] = {}
        self._workloads: dict[tuple[Any, ...], Workload] = {}
        self._references: dict[tuple[Any, ...], torch.Tensor] = {}
        self._bandwidth: float | None = None
        self._last_slot: CacheSlot | None = None

    def bandwidth(self) -> float:
        """The device's copy bandwidth in bytes/s, measured once per runner (read + write counted)."""
        if self._bandwidth is None:
            size = 64 * MIB if self.device.type == "cpu" else 512 * MIB
            self._bandwidth = measure_bandwidth(self.device, nbytes=size, repeats=5)
        return self._bandwidth

    def roofline(self, model: PreTrainedModel, variant: Variant, output: DecodeOutput) -> Roofline:
        """Bytes per decode step of ``variant`` on ``model``, and the static cache's size checked against them."""
        bandwidth = self.bandwidth()
        max_len = variant.prompt_len + variant.new_tokens
        try:
            step = decode_bytes(
                model,
                variant.batch_size,
                variant.prompt_len,
                max(output.steps - 1, 1),
                variant.cache,
                max_cache_len=max_len,
            )
        except ValueError as exc:
            return Roofline(None, bandwidth, note=f"no roofline: {exc}")
        roof = Roofline(step, bandwidth, note=step.note if variant.cache == "none" else "")
        slot = self._last_slot
        kept = slot.kept if slot is not None and variant.cache == "static" and not variant.is_hf else None
        if kept is None:
            return roof
        actual = cache_tensor_bytes(kept)
        expected = static_cache_bytes(model.config, model.dtype, variant.batch_size, max_len)
        note = "" if actual == expected else f"static cache holds {actual:,} bytes, its config says {expected:,}"
        return Roofline(step, bandwidth, actual, expected, note)

    def model(self, name: str, dtype: str = "float32") -> PreTrainedModel:
        key = (name, dtype)
        if key not in self._models:
            self._models[key] = build_model(name, self.device, dtype, seed=self.seed)
        return self._models[key]

    def workload(self, model: PreTrainedModel, variant: Variant) -> Workload:
        key = (id(model), variant.batch_size, variant.new_tokens, variant.stop, variant.prompt_len)
        if key not in self._workloads:
            self._workloads[key] = make_workload(
                model, variant.batch_size, variant.new_tokens, variant.stop, variant.prompt_len, self.seed
            )
        return self._workloads[key]

    def _callable(self, model: PreTrainedModel, variant: Variant) -> PreTrainedModel:
        if not variant.compile:
            return model
        key = (id(model), variant.compile)
        if key not in self._compiled:
            mode = None if variant.compile is True or variant.compile == "default" else str(variant.compile)
            self._compiled[key] = torch.compile(model, mode=mode)
        compiled: PreTrainedModel = self._compiled[key]
        return compiled

    def run_once_fn(
        self, model: PreTrainedModel, variant: Variant, workload: Workload
    ) -> Callable[[Clock], DecodeOutput]:
        """One generation of ``variant`` as a function of the round's clock."""
        variant.validate(self.device)
        if variant.is_hf:
            # generate() compiles by itself (its CompileConfig) when asked; a torch.compile
            # wrapper would forward .generate() to the eager model anyway.
            deferred = variant.stream == "hf-deferred"

            def run_hf(clock: Clock) -> DecodeOutput:
                return hf_generate(model, workload, variant.cache, deferred, bool(variant.compile), clock.mark_prefill)

            return run_hf
        target = self._callable(model, variant)
        policy = get_stop_policy(variant.stream)
        slot = CacheSlot(get_cache(variant.cache), target, variant.batch_size, variant.prompt_len + variant.new_tokens)
        self._last_slot = slot

        def run_loop(clock: Clock) -> DecodeOutput:
            return generate(
                target,
                workload.prompts,
                workload.max_new_tokens,
                slot,
                policy,
                workload.eos_ids,
                workload.pad_id,
                self.tracer,
                clock.mark_prefill,
            )

        return run_loop

    def reference(self, model: PreTrainedModel, variant: Variant, workload: Workload) -> torch.Tensor:
        """Baseline tokens for ``variant``'s configuration (run once, untimed, if not measured yet)."""
        key = (id(model), *variant.config_key)
        if key not in self._references:
            once = self.run_once_fn(model, variant.baseline(), workload)
            with torch.inference_mode():
                self._references[key] = once(Clock(self.device)).generated.cpu()
        return self._references[key]

    def count_syncs(
        self, model: PreTrainedModel, variant: Variant, workload: Workload, budget: int | None
    ) -> SyncReport | None:
        """Blocking device reads per decode step of one untimed generation (None under torch.compile).

        Deterministic on every device: the reads are counted by op (``engine/syncs.py``), not timed.
        generate()'s steps are marked by a forward pre-hook; its stop check counts as hidden there.
        """
        if variant.compile:
            return None
        counter = SyncCounter(self.device)
        # not inference_mode: a dispatch mode sees no op inside it (torch 2.13)
        with torch.no_grad(), no_padding_check(model):
            if variant.is_hf:
                calls = 0

                def mark(_module: torch.nn.Module, _args: Any) -> None:
                    nonlocal calls
                    counter.step(calls)
                    calls += 1

                handle = model.register_forward_pre_hook(mark)
                try:
                    with counter:
                        hf_generate(model, workload, variant.cache, variant.stream == "hf-deferred")
                finally:
                    handle.remove()
            else:
                policy = get_stop_policy(variant.stream)
                slot = CacheSlot(
                    get_cache(variant.cache), model, variant.batch_size, variant.prompt_len + variant.new_tokens
                )
                prompts, eos, pad = workload.prompts, workload.eos_ids, workload.pad_id
                with counter:
                    generate(model, prompts, workload.max_new_tokens, slot, policy, eos, pad, syncs=counter)
        if budget is None and not variant.is_hf:
            budget = 0  # the decode loop's own modes: no read outside the stop policy's declared one
        return sync_report(counter, budget)

    def run(
        self,
        variant: Variant,
        model: PreTrainedModel | None = None,
        parity: bool = True,
        max_syncs_per_step: int | None = None,
    ) -> VariantResult:
        """Measure ``variant`` (on ``model``, else the zoo model it names) and check its parity.

        ``max_syncs_per_step``: hidden blocking reads allowed per decode step (default 0 for the
        decode loop's modes, not gated for generate()'s); the result says when it is exceeded.
        """
        with no_padding_check(model if model is not None else self.model(variant.model, variant.dtype)):
            return self._run(variant, model, parity, max_syncs_per_step)

    def _run(
        self, variant: Variant, model: PreTrainedModel | None, parity: bool, max_syncs_per_step: int | None
    ) -> VariantResult:
        variant.validate(self.device)
        model = model if model is not None else self.model(variant.model, variant.dtype)
        workload = self.workload(model, variant)
        once = self.run_once_fn(model, variant, workload)
        profile: ProfileStats | None = None
        graphs_before = dict(compile_counters())
        try:
            settled = (lambda: compile_counters()["unique_graphs"]) if variant.compile else None
            warmup = max(self.warmup, 1) if variant.compile else self.warmup
            measurement = measure(once, self.device, self.rounds, warmup, settled)
            if variant.compile:
                after = compile_counters()
                measurement.compile_stats = {k: after.get(k, 0) - graphs_before.get(k, 0) for k in after}
            if self.profile_gpu:
                with torch.inference_mode():
                    profile = profile_generation(lambda: once(Clock(self.device)), self.device)
        except torch.OutOfMemoryError:
            self.release()
            raise
        roofline = self.roofline(model, variant, measurement.last)
        syncs = self.count_syncs(model, variant, workload, max_syncs_per_step)
        generated = measurement.last.generated.cpu()
        report: ParityReport | None = None
        if variant.stream == "baseline":
            self._references.setdefault((id(model), *variant.config_key), generated)
        elif parity:
            expected = self.reference(model, variant, workload)
            report = check_parity(expected, generated, workload.eos_ids, label=variant.id)
        return VariantResult(variant, self.device, workload, measurement, report, profile, roofline, syncs)

    def release(self) -> None:
        """Drop cached tensors and return freed device memory (after an OOM, or at the end)."""
        self._references.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

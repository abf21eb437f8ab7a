"""Run and measure variants: the engine's front door, used by the plugin, asv and the CLI.

A ``Runner`` builds each zoo model once, makes each workload once, and keeps the baseline's
tokens per configuration so a variant's parity check never re-times anything.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel

from .caches import CacheSlot, get_cache
from .hf_generate import hf_generate
from .hidden_syncs import no_padding_check
from .loop import DecodeOutput, generate
from .measure import Clock, measure
from .models import build_model
from .nvtx import NULL_TRACER, Tracer
from .parity import ParityReport, check_parity
from .profiling import ProfileStats, compile_counters, profile_generation
from .results import Roofline, VariantResult
from .roofline import MIB, cache_tensor_bytes, decode_bytes, measure_bandwidth, static_cache_bytes
from .stream_modes import get_stop_policy
from .syncs import SyncCounter, SyncReport
from .syncs import report as sync_report
from .variants import Variant
from .workload import Workload, make_workload


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
        slot = CacheSlot(get_cache(variant.cache), target, variant.batch_size, variant.prompt_len + variant.new_tokens)
        self._last_slot = slot
        if variant.compile and slot.kept is not None:
            # Initialise the preallocated cache eagerly, before the compiled model first sees it:
            # inside a trace its lazy initialisation skips mark_static_address, and CUDA graphs
            # (reduce-overhead) then copy the cache in and out every step.
            with torch.no_grad():
                model(workload.prompts, past_key_values=slot.fresh(), use_cache=True)
        tracer = self.tracer.without_window()  # the capture window has its own generation (profile_window)

        def run_loop(clock: Clock) -> DecodeOutput:
            return self._loop(target, variant, workload, slot, tracer=tracer, on_prefill=clock.mark_prefill)

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
                with counter:
                    self._loop(model, variant, workload, syncs=counter)
        if budget is None and not variant.is_hf:
            budget = 0  # the decode loop's own modes: no read outside the stop policy's declared one
        return sync_report(counter, budget)

    def _capture_window(self, model: PreTrainedModel, variant: Variant, workload: Workload) -> None:
        """One dedicated, untimed generation with the nsys capture window open over its chosen steps."""
        with torch.inference_mode():
            self._loop(self._callable(model, variant), variant, workload, tracer=self.tracer)

    def _loop(
        self,
        model: PreTrainedModel,
        variant: Variant,
        workload: Workload,
        slot: CacheSlot | None = None,
        **options: Any,
    ) -> DecodeOutput:
        """One generation of ``variant``'s workload through the decode loop (a fresh cache unless ``slot``)."""
        if slot is None:
            slot = CacheSlot(
                get_cache(variant.cache), model, variant.batch_size, variant.prompt_len + variant.new_tokens
            )
        policy = get_stop_policy(variant.stream)
        prompts, eos, pad = workload.prompts, workload.eos_ids, workload.pad_id
        return generate(model, prompts, workload.max_new_tokens, slot, policy, eos, pad, **options)

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
            if self.tracer.profile_steps is not None and not variant.is_hf:
                self._capture_window(model, variant, workload)
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

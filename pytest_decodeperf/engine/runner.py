"""Run and measure variants: the engine's front door, used by the plugin, asv and the CLI.

A ``Runner`` builds each zoo model once, makes each workload once, and keeps the baseline's
tokens per configuration so a variant's parity check never re-times anything.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers import PreTrainedModel

from .decode.caches import CacheSlot, cache_keyword, get_cache
from .decode.hf_generate import hf_generate
from .decode.hidden_syncs import accepts_causal_mask, no_padding_check
from .decode.loop import DecodeOutput, generate
from .decode.stream_modes import get_stop_policy
from .device.runtime import runtime_for
from .measure.counting import count_syncs
from .measure.nvtx import NULL_TRACER, Tracer
from .measure.profiling import ProfileStats, compile_counters, profile_generation
from .measure.rounds import Budget, Clock, Measurement, measure
from .measure.syncs import SyncCounter, SyncReport
from .parity.compare import ParityReport, check_parity
from .parity.judge import ignored_cache_refusal, judged_report, loop_refusal
from .results import Roofline, TPInfo, VariantResult
from .roofline.analytic import MIB, measure_bandwidth
from .roofline.kv_memory import AllocationWatch
from .roofline.routing import GenerationProbe, probe_generation
from .roofline.variant import needs_probe, variant_roofline
from .spec.checks import check_compiled, check_drivable, check_dtype
from .spec.models import build_model, load_tokenizer
from .spec.variants import Variant
from .spec.workload import Workload, check_not_degenerate, make_workload

if TYPE_CHECKING:
    from .measure.collectives import CollectiveCounter
    from .parallel.distributed import RankGroup


@dataclass
class _ModelState:
    """What the runner keeps per model object: workloads, compiled wrappers, reference tokens."""

    workloads: dict[tuple[Any, ...], Workload] = field(default_factory=dict)
    compiled: dict[bool | str, Any] = field(default_factory=dict)
    graphs_before: dict[bool | str, int] = field(default_factory=dict)  # dynamo's graph count at compile time
    baselines: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)
    references: dict[tuple[Any, ...], tuple[torch.Tensor, str]] = field(default_factory=dict)
    takes_causal_mask: bool | None = None
    tokenizer: tuple[Any] | None = None  # (the tokenizer beside the model's checkpoint, or None,), looked up once
    cache_refusal: tuple[str | None] | None = None  # (why the model cannot be given a cache,), probed once

    def causal_mask(self, model: PreTrainedModel) -> bool:
        """Whether the cache-less loop may pass a ready causal mask to this model (probed once)."""
        if self.takes_causal_mask is None:
            self.takes_causal_mask = accepts_causal_mask(getattr(model, "_orig_mod", model))
        return self.takes_causal_mask


def _workload_key(variant: Variant) -> tuple[Any, ...]:
    return (variant.batch_size, variant.new_tokens, variant.stop, variant.prompt_len, variant.prompts)


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
        threads: int | None = None,
        max_time_s: float = 0.0,
        paired: bool = True,
        ranks: RankGroup | None = None,
    ):
        self.device = torch.device(device)
        self.ranks = ranks  # tensor-parallel ranks this process is one of (distributed.py); None: one process
        self.rounds = rounds
        # More timed rounds, up to this many seconds, while the median is not pinned (measure.Budget); a
        # stream mode's rounds alternate with its baseline's, so its speedup comes from pairs (``paired``).
        self.budget = Budget(rounds, max_time_s)
        self.paired = paired
        self.warmup = warmup
        self.tracer = tracer
        self.seed = seed
        self.profile_gpu = profile_gpu and self.device.type == "cuda"
        # torch's thread count changes CPU timings by tens of percent under load: pinned while
        # measuring when given, and recorded in every record either way.
        self.threads = threads
        self._models: dict[tuple[str, str, int], PreTrainedModel] = {}
        # Per model object, never per id(): Python reuses the ids of freed objects, and a new model
        # must not inherit a freed one's prompts, stops or reference tokens.
        self._state: weakref.WeakKeyDictionary[PreTrainedModel, _ModelState] = weakref.WeakKeyDictionary()
        self._last_compiled: weakref.ref[PreTrainedModel] | None = None
        self._bandwidth: float | None = None
        self._last_slot: CacheSlot | None = None
        self._last_watch: AllocationWatch | None = None

    @property
    def measured_bandwidth(self) -> float | None:
        """The copy bandwidth in bytes/s if this runner measured it already (None: not yet)."""
        return self._bandwidth

    def bandwidth(self) -> float:
        """The device's copy bandwidth in bytes/s, measured once per runner (read + write counted)."""
        if self._bandwidth is None:
            size = 64 * MIB if self.device.type == "cpu" else 512 * MIB
            self._bandwidth = measure_bandwidth(self.device, nbytes=size, repeats=5)
        return self._bandwidth

    def roofline(
        self, model: PreTrainedModel, variant: Variant, output: DecodeOutput, measurement: Measurement | None = None
    ) -> Roofline:
        """Bytes per decode step of ``variant`` on ``model`` (``variant_roofline.py``), and the KV cache checked.

        A model with MoE layers or a recurrent state gets one more untimed generation, watched: the experts its
        routers picked and the state its cache holds (``routing.py``).
        """
        probe = self.probe(model, variant) if needs_probe(model) else None
        slot = self._last_slot
        kept = slot.kept if slot is not None and variant.cache == "static" and not variant.is_hf else None
        return variant_roofline(
            model,
            variant,
            output.steps,
            self.bandwidth(),
            probe=probe,
            kept=kept,
            watch=self._last_watch if kept is not None else None,
            generation_peak=measurement.generation_peak_bytes if measurement is not None else None,
        )

    def probe(self, model: PreTrainedModel, variant: Variant) -> GenerationProbe:
        """One untimed generation of ``variant`` (eager, a fresh cache) with the router and cache watch on."""
        workload = self.workload(model, variant)

        def run() -> DecodeOutput:
            with torch.inference_mode(), no_padding_check(model):
                if variant.is_hf:
                    return hf_generate(model, workload, variant.cache, variant.stream == "hf-deferred")
                return self._loop(model, variant, workload)

        return probe_generation(model, run)

    def model(self, name: str, dtype: str = "float32", tp: int = 1) -> PreTrainedModel:
        """Zoo model or checkpoint ``name``, built once; ``tp`` > 1: sharded over the ranks (every rank loads it)."""
        key = (name, dtype, tp)
        if key not in self._models:
            if tp > 1:
                from .parallel.tensor_parallel import load_sharded

                self._models[key] = load_sharded(name, dtype, tp, seed=self.seed)
            else:
                self._models[key] = build_model(name, self.device, dtype, seed=self.seed)
        return self._models[key]

    def _of(self, model: PreTrainedModel) -> _ModelState:
        return self._state.setdefault(model, _ModelState())

    def tokenizer(self, model: PreTrainedModel) -> Any:
        """The tokenizer saved beside ``model``'s checkpoint (its ``name_or_path``), or None."""
        state = self._of(model)
        if state.tokenizer is None:
            path = str(getattr(model, "name_or_path", "") or "")
            state.tokenizer = (load_tokenizer(path) if path else None,)
        return state.tokenizer[0]

    def workload(self, model: PreTrainedModel, variant: Variant) -> Workload:
        workloads = self._of(model).workloads
        key = _workload_key(variant)
        if key not in workloads:
            tokenizer = self.tokenizer(model) if variant.prompts == "text" else None
            workloads[key] = make_workload(
                model,
                variant.batch_size,
                variant.new_tokens,
                variant.stop,
                variant.prompt_len,
                self.seed,
                variant.prompts,
                tokenizer,
            )
        return workloads[key]

    def _callable(self, model: PreTrainedModel, variant: Variant) -> PreTrainedModel:
        if not variant.compile:
            return model
        state = self._of(model)
        if variant.compile not in state.compiled:
            if self._last_compiled is not None and self._last_compiled() is not model:
                # Dynamo's recompile limit is shared per code object: after a few models, later
                # ones would silently run eager (0 graphs). Each model starts from a clean slate.
                torch._dynamo.reset()
                for other in list(self._state.values()):
                    other.compiled.clear()
            self._last_compiled = weakref.ref(model)
            mode = None if variant.compile is True or variant.compile == "default" else str(variant.compile)
            state.graphs_before[variant.compile] = compile_counters()["unique_graphs"]
            state.compiled[variant.compile] = torch.compile(model, mode=mode)
        compiled: PreTrainedModel = state.compiled[variant.compile]
        return compiled

    def run_once_fn(
        self, model: PreTrainedModel, variant: Variant, workload: Workload, track: bool = True
    ) -> Callable[[Clock], DecodeOutput]:
        """One generation of ``variant`` as a function of the round's clock.

        ``track``: keep its cache slot (and allocation watch) as the one the roofline and the KV check read;
        False for the paired baseline, whose cache is not the variant's.
        """
        variant.validate(self.device)
        if variant.is_hf:
            # generate() compiles by itself (its CompileConfig) when asked; a torch.compile
            # wrapper would forward .generate() to the eager model anyway.
            deferred = variant.stream == "hf-deferred"

            def run_hf(clock: Clock) -> DecodeOutput:
                return hf_generate(
                    model, workload, variant.cache, deferred, bool(variant.compile), clock.mark_prefill, clock.mark_step
                )

            return run_hf
        target = self._callable(model, variant)
        slot = CacheSlot(get_cache(variant.cache), target, variant.batch_size, variant.prompt_len + variant.new_tokens)
        requested = runtime_for(self.device).requested_bytes
        if track:
            self._last_slot = slot
            self._last_watch = None
        if track and slot.kept is not None and requested() is not None:
            # what the static cache's layers ask the allocator for when they initialise (first generation)
            self._last_watch = AllocationWatch(cast(Callable[[], int], requested)).watch(slot.kept)
        if variant.compile and slot.kept is not None:
            # Initialise the preallocated cache eagerly, before the compiled model first sees it:
            # inside a trace its lazy initialisation skips mark_static_address, and CUDA graphs
            # (reduce-overhead) then copy the cache in and out every step.
            with torch.no_grad():
                model(workload.prompts, use_cache=True, **{cache_keyword(model) or "past_key_values": slot.fresh()})
        tracer = self.tracer.without_window()  # the capture window has its own generation (profile_window)
        if slot.strategy.feeds_full_sequence or workload.attention_mask is not None:
            self._of(target).causal_mask(target)  # probe once, before any timed round

        def run_loop(clock: Clock) -> DecodeOutput:
            return self._loop(
                target, variant, workload, slot, tracer=tracer, on_prefill=clock.mark_prefill, on_step=clock.mark_step
            )

        return run_loop

    def reference(self, model: PreTrainedModel, variant: Variant, workload: Workload) -> torch.Tensor:
        """Baseline tokens for ``variant``'s configuration (run once, untimed, if not measured yet)."""
        baselines = self._of(model).baselines
        key = variant.config_key
        if key not in baselines:
            once = self.run_once_fn(model, variant.baseline(), workload)
            with torch.inference_mode():
                baselines[key] = once(Clock(self.device)).generated.cpu()
        return baselines[key]

    def generate_reference(
        self, model: PreTrainedModel, variant: Variant, workload: Workload
    ) -> tuple[torch.Tensor, str]:
        """The independent reference for ``variant``'s workload: (tokens [B, N], what made them).

        transformers' generate(), greedy, with the workload's stops (``reference.py``); for a model it
        cannot drive, the decode loop without a cache.
        """
        refs = self._of(model).references
        key = _workload_key(variant)
        if key not in refs:
            with torch.inference_mode():
                try:
                    out = hf_generate(model, workload, "dynamic")
                    refs[key] = (out.generated.cpu(), "transformers generate()")
                except (TypeError, ValueError, AttributeError, NotImplementedError):
                    plain = replace(variant, cache="none", stream="baseline", compile=False)
                    out = self._loop(model, plain, workload)
                    refs[key] = (out.generated.cpu(), "the decode loop without a cache (generate() cannot run it)")
            check_not_degenerate(refs[key][0], workload.eos_ids.cpu(), f"{type(model).__name__} ({variant.stop} stops)")
        return refs[key]

    def count_syncs(
        self,
        model: PreTrainedModel,
        variant: Variant,
        workload: Workload,
        budget: int | None,
        collectives: CollectiveCounter | None = None,
    ) -> SyncReport | None:
        """Blocking device reads per decode step of one untimed generation (``counting.py``)."""

        def loop(counter: SyncCounter) -> None:
            self._loop(model, variant, workload, syncs=counter)

        return count_syncs(self.device, model, variant, workload, budget, loop, collectives)

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
        if slot.strategy.feeds_full_sequence:
            options["causal_mask"] = self._of(model).causal_mask(model)
        if workload.attention_mask is not None:
            options["attention_mask"] = workload.attention_mask
            options["ready_mask"] = self._of(model).causal_mask(model)
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
        before = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with no_padding_check(model if model is not None else self.model(variant.model, variant.dtype, variant.tp)):
                result = self._run(variant, model, parity, max_syncs_per_step)
            result.threads = torch.get_num_threads()
            return result
        finally:
            torch.set_num_threads(before)

    def _pairable(self, model: PreTrainedModel, variant: Variant) -> bool:
        """Whether ``variant``'s rounds can alternate with its baseline's (then its speedup is paired).

        Not the baseline itself; not under torch.compile (the baseline's own static cache would recompile
        in a warmup round that has no settle loop, and spend dynamo's recompile limit twice as fast); not a
        generate() mode on a model the decode loop cannot drive or that ignores the cache it is given (the
        baseline would time wrong tokens).
        """
        if not self.paired or variant.stream == "baseline" or variant.compile:
            return False
        if loop_refusal(model) is not None:
            return False
        return variant.cache == "none" or self._cache_refusal(model) is None

    def _cache_refusal(self, model: PreTrainedModel) -> str | None:
        """Why ``model`` ignores a cache it is given (probed once per model object), or None."""
        state = self._of(model)
        if state.cache_refusal is None:
            state.cache_refusal = (ignored_cache_refusal(model),)
        return state.cache_refusal[0]

    def _run(
        self, variant: Variant, model: PreTrainedModel | None, parity: bool, max_syncs_per_step: int | None
    ) -> VariantResult:
        variant.validate(self.device)
        model = model if model is not None else self.model(variant.model, variant.dtype, variant.tp)
        check_dtype(model, variant)
        from .parallel.tensor_parallel import Sharded

        sharded = Sharded(self.ranks, model, variant) if variant.tp > 1 else None
        check_drivable(model, variant, lambda: self._cache_refusal(model))
        workload = self.workload(model, variant)
        once = self.run_once_fn(model, variant, workload)
        reference = None
        if self._pairable(model, variant):
            base = variant.baseline()

            def reference() -> Callable[[Clock], DecodeOutput]:  # made in measure(), dropped before its memory round
                return self.run_once_fn(model, base, workload, track=False)

        profile: ProfileStats | None = None
        graphs_before = dict(compile_counters())
        try:
            settled = (lambda: compile_counters()["unique_graphs"]) if variant.compile else None
            warmup = max(self.warmup, 1) if variant.compile else self.warmup
            combine = sharded.ranks.slowest if sharded is not None else None  # each round: the slowest rank's
            measurement = measure(once, self.device, self.budget, warmup, settled, reference=reference, combine=combine)
            if variant.compile:
                after = compile_counters()
                measurement.compile_stats = {k: after.get(k, 0) - graphs_before.get(k, 0) for k in after}
                if measurement.compile_stats.get("recompile_limit_hits", 0) > 0:
                    # Dynamo keeps the frame eager for good once the limit is hit: the wrapper is dropped and
                    # dynamo reset, so the next variant compiles afresh instead of inheriting an eager frame.
                    self._of(model).compiled.pop(variant.compile, None)
                    torch._dynamo.reset()
                check_compiled(
                    variant, measurement.compile_stats, after, self._of(model).graphs_before.get(variant.compile)
                )
            if self.profile_gpu:
                with torch.inference_mode():
                    profile = profile_generation(lambda: once(Clock(self.device)), self.device)
            if self.tracer.profile_steps is not None and not variant.is_hf:
                self._capture_window(model, variant, workload)
            roofline = self.roofline(model, variant, measurement.last, measurement)  # may run a watched generation
        except torch.OutOfMemoryError:
            self.release()
            raise
        self._last_slot = self._last_watch = None  # they hold the model: a runner keeps no model alive past its run
        counter = sharded.counter if sharded is not None else None
        syncs = self.count_syncs(model, variant, workload, max_syncs_per_step, counter)
        generated = measurement.last.generated.cpu()
        tp = TPInfo(1, self.ranks.world_size, None) if self.ranks is not None else None
        if sharded is not None:  # the worst rank's counts, every rank's tokens compared, the roofline per rank
            syncs, roofline, tp = sharded.finish(syncs, roofline, generated)
        report: ParityReport | None = None
        if variant.stream == "baseline":
            self._of(model).baselines.setdefault(variant.config_key, generated)
        if parity:
            report = self.parity(model, variant, workload, generated)
        return VariantResult(variant, self.device, workload, measurement, report, profile, roofline, syncs, tp=tp)

    def parity(
        self, model: PreTrainedModel, variant: Variant, workload: Workload, generated: torch.Tensor
    ) -> ParityReport:
        """Held to generate() (divergences judged by the logits), and bit for bit to its cache's baseline."""
        expected, source = self.generate_reference(model, variant, workload)
        report = check_parity(expected, generated, workload.eos_ids, variant.id, source)
        report = judged_report(model, workload.prompts, expected, report, workload.attention_mask)
        if report.ok and variant.stream != "baseline" and not variant.is_hf:
            # Stream modes of one cache differ only in when the host reads the flag: exact, always.
            same_cache = check_parity(self.reference(model, variant, workload), generated, workload.eos_ids, variant.id)
            if not same_cache.ok:
                return same_cache
        return report

    def release(self) -> None:
        """Drop cached tensors and return freed device memory (after an OOM, or at the end)."""
        for state in self._state.values():
            state.baselines.clear()
            state.references.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

"""Run and measure variants: the engine's front door, used by the plugin, asv and the CLI.

A ``Runner`` builds each zoo model once, makes each workload once, and keeps the baseline's tokens per
configuration so a variant's parity check never re-times anything (``held.py``). Every generation it runs,
timed or not, goes through one seam (``decode/generation.py``): the variant's ``Generation`` called on the model,
the request and a cache slot, watched by observers. The timed rounds watch it with the clock, the sync count with
the sync counter, the roofline's probe with its hooks, the nsys window with the tracer: the same call each time.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import torch
from transformers import PreTrainedModel

from .decode.caches import CacheSlot, get_cache
from .decode.forward import ForwardCall
from .decode.generation import Generation, LoopGeneration, generation_for
from .decode.hidden_syncs import no_padding_check
from .decode.observe import NULL_OBSERVER, Observer, observers
from .decode.refusals import loop_refusal
from .decode.request import DecodeOutput
from .device.runtime import runtime_for
from .held import Held, workload_key
from .measure.counting import SyncReport, count_syncs
from .measure.nvtx import NULL_TRACER, Tracer
from .measure.profiling import ProfileStats, compile_counters, profile_generation
from .measure.rounds import Budget, Clock, Measurement, measure
from .measure.steady import pinned_threads
from .parity.compare import ParityReport, check_parity
from .parity.judge import judged_report
from .parity.reference import alone_reference, greedy_reference
from .results import VariantResult
from .roofline.analytic import MIB, measure_bandwidth
from .roofline.kv_memory import AllocationWatch
from .roofline.routing import GenerationProbe, probe_generation
from .roofline.variant import Roofline, draft_bytes, needs_probe, variant_roofline
from .spec.attention import COMPILED_KERNELS
from .spec.checks import check_attn, check_compiled, check_drivable, check_dtype
from .spec.models import actual_attn
from .spec.variants import Variant
from .spec.workload import Workload, check_not_degenerate

if TYPE_CHECKING:
    from .measure.collectives import CollectiveCounter
    from .parallel.distributed import RankGroup

RunOnce = Callable[[Clock], DecodeOutput]


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
        self.held = Held(self.device, seed)
        self._bandwidth: float | None = None
        self._last_slot: CacheSlot | None = None
        self._last_watch: AllocationWatch | None = None
        self._open: list[Generation] = []  # timed generations that may keep something running (a server)

    # --- what the runner holds ------------------------------------------------------------------------------

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

    def model(self, name: str, dtype: str = "float32", tp: int = 1, attn: str | None = None) -> PreTrainedModel:
        """Zoo model or checkpoint ``name`` with attention kernel ``attn``, built once; ``tp`` > 1: sharded over the
        ranks (every rank loads it)."""
        return self.held.model(name, dtype, tp, attn)

    def tokenizer(self, model: PreTrainedModel) -> object:
        return self.held.tokenizer(model)

    def workload(self, model: PreTrainedModel, variant: Variant) -> Workload:
        return self.held.workload(model, variant)

    def use_draft(self, label: str, model: PreTrainedModel) -> None:
        """The draft ``hf-assisted`` variants naming ``label`` get (else the zoo model or checkpoint of that name)."""
        self.held.drafts[label] = model

    @property
    def drafts(self) -> dict[str, PreTrainedModel]:
        return self.held.drafts

    # --- the seam: one generation of a variant --------------------------------------------------------------

    def generation(self, model: PreTrainedModel, variant: Variant, workload: Workload) -> Generation:
        """The variant's generation; a ready 4-D mask is probed (once per model) only where one would be passed."""
        ready = False
        if variant.cache == "none" or workload.attention_mask is not None:
            ready = self.held.of(model).ready_mask(model)
        draft = self.held.draft(variant, model)
        return generation_for(
            variant.stream,
            variant.cache,
            variant.compile,
            ready,
            draft,
            variant.lookup_tokens,
            variant.requests_at_once,
        )

    def _slot(self, model: PreTrainedModel, variant: Variant) -> CacheSlot:
        return CacheSlot(get_cache(variant.cache), model, variant.batch_size, variant.prompt_len + variant.new_tokens)

    def once(
        self,
        model: PreTrainedModel,
        variant: Variant,
        workload: Workload,
        observer: Observer = NULL_OBSERVER,
        compiled: bool = False,
    ) -> DecodeOutput:
        """One untimed generation of ``variant`` with a fresh cache, watched by ``observer`` (eager unless
        ``compiled``): what the sync count, the roofline's probe, the nsys window and the references run."""
        generation = self.generation(model, variant, workload)
        target = self.held.compiled(model, variant) if compiled and isinstance(generation, LoopGeneration) else model
        slot = self._slot(target, variant) if generation.uses_slot else None
        try:
            return generation(target, workload, slot, observer)
        finally:
            generation.close()

    def run_once_fn(self, model: PreTrainedModel, variant: Variant, workload: Workload, track: bool = True) -> RunOnce:
        """One timed generation of ``variant`` as a function of the round's clock (its cache slot kept across rounds).

        ``track``: keep its cache slot (and allocation watch) as the one the roofline and the KV check read;
        False for the paired baseline, whose cache is not the variant's.
        """
        variant.validate(self.device)
        generation = self.generation(model, variant, workload)
        self._open.append(generation)  # closed once the variant is measured (close_generations)
        # generate() compiles by itself (its CompileConfig) when asked: a torch.compile wrapper would forward
        # .generate() to the eager model anyway.
        target = self.held.compiled(model, variant) if isinstance(generation, LoopGeneration) else model
        slot = self._slot(target, variant) if generation.uses_slot else None
        if track:
            self._last_slot, self._last_watch = slot, None
        requested = runtime_for(self.device).requested_bytes
        if track and slot is not None and slot.kept is not None and requested() is not None:
            # what the static cache's layers ask the allocator for when they initialise (first generation)
            self._last_watch = AllocationWatch(cast(Callable[[], int], requested)).watch(slot.kept)
        if variant.compile and slot is not None and slot.kept is not None:
            # Initialise the preallocated cache eagerly, before the compiled model first sees it: inside a trace its
            # lazy initialisation skips mark_static_address, and CUDA graphs (reduce-overhead) then copy the cache
            # in and out every step.
            with torch.no_grad():
                call = ForwardCall(model, variant.batch_size, workload.prompt_len, self.device)
                model(workload.prompts, **call.kwargs(0, workload.prompt_len, slot.fresh()))
        tracer = self.tracer.without_window()  # the capture window has its own generation (``_capture_window``)
        extra = tracer if tracer.active else None  # a disabled tracer costs nothing a step: left out

        def run(clock: Clock) -> DecodeOutput:
            return generation(target, workload, slot, observers(clock, extra))

        return run

    # --- references -------------------------------------------------------------------------------------------

    def reference(self, model: PreTrainedModel, variant: Variant, workload: Workload) -> torch.Tensor:
        """Baseline tokens for ``variant``'s configuration (run once, untimed, if not measured yet)."""
        baselines = self.held.of(model).baselines
        key = variant.config_key
        if key not in baselines:
            with torch.inference_mode():
                out = self.once(model, variant.baseline(), workload, compiled=bool(variant.compile))
            baselines[key] = out.generated.cpu()
        return baselines[key]

    def generate_reference(
        self, model: PreTrainedModel, variant: Variant, workload: Workload
    ) -> tuple[torch.Tensor, str]:
        """The independent reference for ``variant``'s workload: (tokens [B, N], what made them)
        (``parity/reference.py``: transformers' generate(), greedy, with the workload's stops)."""
        refs = self.held.of(model).references
        key = workload_key(variant)
        if variant.stream == "hf-serve":  # each request is owed what it gets alone
            key = (*key, "alone")
        if key not in refs:
            refs[key] = alone_reference(model, workload) if key[-1] == "alone" else greedy_reference(model, workload)
            check_not_degenerate(refs[key][0], workload.eos_ids.cpu(), f"{type(model).__name__} ({variant.stop} stops)")
        return refs[key]

    # --- untimed generations that count and watch -------------------------------------------------------------

    def count_syncs(
        self,
        model: PreTrainedModel,
        variant: Variant,
        workload: Workload,
        budget: int | None,
        collectives: CollectiveCounter | None = None,
    ) -> SyncReport | None:
        """Blocking device reads per decode step of one untimed generation (None under torch.compile, or with an
        attention kernel transformers compiles: ``spec/attention.py``)."""
        generation = self.generation(model, variant, workload)
        if variant.compile or actual_attn(model) in COMPILED_KERNELS or not generation.counts_syncs:
            return None
        return count_syncs(
            self.device,
            model,
            generation,
            lambda watch: self.once(model, variant, workload, watch),
            budget,
            collectives,
        )

    def probe(self, model: PreTrainedModel, variant: Variant) -> GenerationProbe:
        """One untimed generation of ``variant`` (eager, a fresh cache) with the router and cache watch on."""
        workload = self.workload(model, variant)

        def run() -> DecodeOutput:
            with torch.inference_mode(), no_padding_check(model):
                return self.once(model, variant, workload)

        return probe_generation(model, run)

    def _capture_window(self, model: PreTrainedModel, variant: Variant, workload: Workload) -> None:
        """One dedicated, untimed generation with the nsys capture window open over its chosen steps."""
        with torch.inference_mode():
            self.once(model, variant, workload, self.tracer, compiled=True)

    def roofline(
        self, model: PreTrainedModel, variant: Variant, output: DecodeOutput, measurement: Measurement | None = None
    ) -> Roofline:
        """Bytes per decode step of ``variant`` on ``model`` (``roofline/variant.py``), and the KV cache checked.

        A model with MoE layers or a recurrent state gets one more untimed generation, watched: the experts its
        routers picked and the state its cache holds (``roofline/routing.py``).
        """
        probe = self.probe(model, variant) if needs_probe(model) else None
        slot = self._last_slot
        kept = slot.kept if slot is not None and variant.cache == "static" else None
        roof = variant_roofline(
            model,
            variant,
            output.steps,
            self.bandwidth(),
            probe=probe,
            kept=kept,
            watch=self._last_watch if kept is not None else None,
            generation_peak=measurement.generation_peak_bytes if measurement is not None else None,
        )
        draft = self.held.draft(variant, model)
        if draft is None or output.speculation is None:
            return roof
        per_step, note = draft_bytes(draft, variant, output.speculation.draft_steps)
        return replace(roof, draft_bytes_per_step=per_step, note="; ".join(n for n in (roof.note, note) if n))

    # --- a variant, measured ----------------------------------------------------------------------------------

    def run(
        self,
        variant: Variant,
        model: PreTrainedModel | None = None,
        parity: bool = True,
        max_syncs_per_step: int | None = None,
    ) -> VariantResult:
        """Measure ``variant`` (on ``model``, else the zoo model it names) and check its parity.

        ``max_syncs_per_step``: hidden blocking reads allowed per decode step (default 0 for the decode loop's modes
        and your decoders, not gated for generate()'s); the result says when it is exceeded.
        """
        model = model if model is not None else self.model(variant.model, variant.dtype, variant.tp, variant.attn)
        with pinned_threads(self.threads), no_padding_check(model):
            result = self._run(variant, model, parity, max_syncs_per_step)
            result.threads = torch.get_num_threads()
        return result

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
        return variant.cache == "none" or self.held.of(model).refusal(model) is None

    def _run(
        self, variant: Variant, model: PreTrainedModel, parity: bool, max_syncs_per_step: int | None
    ) -> VariantResult:
        variant.validate(self.device)
        check_dtype(model, variant)
        check_attn(model, variant)
        from .parallel.tensor_parallel import Sharded

        sharded = Sharded(self.ranks, model, variant) if variant.tp > 1 else None
        check_drivable(model, variant, lambda: self.held.of(model).refusal(model))
        workload = self.workload(model, variant)
        once = self.run_once_fn(model, variant, workload)
        reference = None
        if self._pairable(model, variant):
            base = variant.paired()

            def reference() -> RunOnce:  # made in measure(), dropped before its memory round
                return self.run_once_fn(model, base, workload, track=False)

        profile: ProfileStats | None = None
        graphs_before = dict(compile_counters())
        try:
            settled = (lambda: compile_counters()["unique_graphs"]) if variant.compile else None
            warmup = max(self.warmup, 1) if variant.compile else self.warmup
            combine = sharded.ranks.slowest if sharded is not None else None  # each round: the slowest rank's
            measurement = measure(once, self.device, self.budget, warmup, settled, reference=reference, combine=combine)
            if variant.compile:
                self._compiled_ran(model, variant, measurement, graphs_before)
            if self.profile_gpu:
                with torch.inference_mode():
                    profile = profile_generation(lambda: once(Clock(self.device)), self.device)
            if self.tracer.profile_steps is not None:
                self._capture_window(model, variant, workload)
            roofline = self.roofline(model, variant, measurement.last, measurement)  # may run a watched generation
        except torch.OutOfMemoryError:
            self.release()
            raise
        finally:
            self.close_generations()
        self._last_slot = self._last_watch = None  # they hold the model: a runner keeps no model alive past its run
        counter = sharded.counter if sharded is not None else None
        syncs = self.count_syncs(model, variant, workload, max_syncs_per_step, counter)
        generated = measurement.last.generated.cpu()
        tp = None
        if self.ranks is not None:
            from .parallel.tensor_parallel import TPInfo

            tp = TPInfo(1, self.ranks.world_size, None)
        if sharded is not None:  # the worst rank's counts, every rank's tokens compared, the roofline per rank
            syncs, roofline, tp = sharded.finish(syncs, roofline, generated)
        report: ParityReport | None = None
        if variant.stream == "baseline":
            self.held.of(model).baselines.setdefault(variant.config_key, generated)
        if parity:
            report = self.parity(model, variant, workload, generated)
        return VariantResult(variant, self.device, workload, measurement, report, profile, roofline, syncs, tp=tp)

    def _compiled_ran(
        self, model: PreTrainedModel, variant: Variant, measurement: Measurement, before: dict[str, int]
    ) -> None:
        """A compiled variant's dynamo counters over its rounds, and the refusal of a partly eager figure."""
        after = compile_counters()
        measurement.compile_stats = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        state = self.held.of(model)
        if measurement.compile_stats.get("recompile_limit_hits", 0) > 0:
            # Dynamo keeps the frame eager for good once the limit is hit: the wrapper is dropped and dynamo
            # reset, so the next variant compiles afresh instead of inheriting an eager frame.
            state.compiled.pop(variant.compile, None)
            torch._dynamo.reset()
        check_compiled(variant, measurement.compile_stats, after, state.graphs_before.get(variant.compile))

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

    def close_generations(self) -> None:
        """Stop what the timed generations keep running between rounds (a continuous-batching server)."""
        while self._open:
            self._open.pop().close()

    def release(self) -> None:
        """Drop cached tensors and return freed device memory (after an OOM, or at the end)."""
        self.close_generations()
        self.held.drafts.clear()
        self.held.forget_tokens()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

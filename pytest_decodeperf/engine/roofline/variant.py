"""A measured variant's roofline: the bytes its decode steps must move, from what its generation really did.

``roofline.py`` counts K/V analytically and ``weights.py`` splits the weights by how a step reads them; what only a
generation can tell comes from one untimed generation watched by ``routing.probe_generation`` (run only for models
that need it: MoE layers, or layers with a recurrent state): the experts the routers picked, and the cache whose
state tensors a step reads and writes. A static cache's K/V tensors are checked against the analytic size, and on
CUDA what it asked the allocator for (``kv_memory.py``); a mismatch is the variant's note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel

from ..spec.variants import Variant
from .analytic import (
    StepBytes,
    achieved,
    cache_state_bytes,
    cache_tensor_bytes,
    decode_bytes,
    has_state_layers,
    static_cache_bytes,
)
from .kv_memory import AllocationWatch
from .routing import GenerationProbe
from .weights import expert_modules

__all__ = ["ROOFLINE_FIELDS", "Roofline", "needs_probe", "variant_roofline"]


@dataclass(frozen=True)
class Roofline:
    """What a decode step of the variant must move, and what the device can move (engine/roofline/analytic.py)."""

    step: StepBytes | None  # None: the config's KV layout is unknown to the analytic model (see note)
    bandwidth: float  # bytes/s, the device's measured copy bandwidth
    kv_cache_bytes: int | None = None  # static cache: its tensors' nbytes after the run
    kv_cache_bytes_analytic: int | None = None  # a static cache of the variant's length, from the config
    kv_cache_allocated_bytes: int | None = None  # CUDA, static: the bytes the cache asked the allocator for
    note: str = ""
    draft_bytes_per_step: float | None = None  # hf-assisted: what a draft step reads (the draft's own roofline)

    def fields(self, ms_per_step: float) -> dict[str, Any]:
        """The record's roofline fields; achieved figures are None without a finite decode time."""
        step = self.step
        out: dict[str, Any] = {
            "bytes_per_step": step.total if step else None,
            "weight_bytes_per_step": step.weights if step else None,
            "kv_bytes_per_step": step.kv if step else None,
            "state_bytes_per_step": (step.state or None) if step else None,  # None: no layer holds a state
            "weight_bytes_resident": step.weights_resident if step else None,
            "active_experts_per_step": step.active_experts if step else None,
            "routed_experts": step.routed_experts if step else None,
            "bandwidth_gb_per_s": self.bandwidth / 1e9,
            "floor_ms_per_step": None,
            "achieved_gb_per_s": None,
            "bw_fraction": None,
            "times_floor": None,
            "kv_cache_bytes": self.kv_cache_bytes,
            "kv_cache_bytes_analytic": self.kv_cache_bytes_analytic,
            "kv_cache_allocated_bytes": self.kv_cache_allocated_bytes,
            "draft_bytes_per_step": self.draft_bytes_per_step,
        }
        if self.step is not None:
            out["floor_ms_per_step"] = self.step.total / self.bandwidth * 1e3
            if ms_per_step > 0 and ms_per_step == ms_per_step:  # not NaN: there was a decode step
                gb_s, fraction, _ = achieved(self.step.total, ms_per_step, self.bandwidth)
                out["achieved_gb_per_s"], out["bw_fraction"] = gb_s, fraction
                out["times_floor"] = 1.0 / fraction if fraction > 0 else None
        return out


ROOFLINE_FIELDS = (
    "bytes_per_step",
    "weight_bytes_per_step",
    "kv_bytes_per_step",
    "state_bytes_per_step",
    "weight_bytes_resident",
    "active_experts_per_step",
    "routed_experts",
    "bandwidth_gb_per_s",
    "floor_ms_per_step",
    "achieved_gb_per_s",
    "bw_fraction",
    "times_floor",
    "kv_cache_bytes",
    "kv_cache_bytes_analytic",
    "kv_cache_allocated_bytes",
    "draft_bytes_per_step",
)


def needs_probe(model: PreTrainedModel) -> bool:
    """Whether the roofline needs a watched generation: routed experts to count, or a recurrent state to size."""
    return has_state_layers(model.config) or next(expert_modules(model), None) is not None


def _routing_note(probe: GenerationProbe | None) -> tuple[list[float] | None, str]:
    """The mean experts per step of each MoE layer (None: every expert counted) and what to say about it."""
    if probe is None or probe.routing is None:
        return None, ""
    routing = probe.routing
    if routing.observed:
        return routing.mean_per_layer(), ""
    unseen = ", ".join(routing.unobserved[:2]) + (", ..." if len(routing.unobserved) > 2 else "")
    return None, f"routing not observed ({unseen}): every expert counted, an upper bound"


def variant_roofline(
    model: PreTrainedModel,
    variant: Variant,
    steps: int,
    bandwidth: float,
    *,
    probe: GenerationProbe | None = None,
    kept: Any = None,
    watch: AllocationWatch | None = None,
    generation_peak: int | None = None,
) -> Roofline:
    """Bytes per decode step of ``variant`` (``steps`` forward passes, prefill included) against ``bandwidth``.

    ``probe``: the watched generation (``needs_probe``); ``kept``: the static cache the timed rounds used (its
    tensors are checked); ``watch``: its allocation (CUDA); ``generation_peak``: a dynamic cache's memory round.
    """
    max_len = variant.prompt_len + variant.new_tokens
    active, routing_note = _routing_note(probe)
    cache = probe.cache if probe is not None and probe.cache is not None else kept
    state = cache_state_bytes(cache) if cache is not None else None
    # continuous batching's paged cache reads what a dynamic one reads, for the requests a step carries
    paged = variant.cache == "paged"
    try:
        step = decode_bytes(
            model,
            variant.requests_at_once if paged else variant.batch_size,
            variant.prompt_len,
            max(steps - 1, 1),
            "dynamic" if paged else variant.cache,
            max_cache_len=max_len,
            active_experts=active,
            state_bytes=state or None,
        )
    except ValueError as exc:
        return Roofline(None, bandwidth, note=f"no roofline: {exc}")
    notes = [n for n in (step.note if variant.cache == "none" else "", routing_note) if n]
    roof = Roofline(step, bandwidth, note="; ".join(notes))
    try:
        # a rank sharded over tp holds 1/tp of the K/V heads (tensor_parallel.shard_refusal: tp divides them)
        expected = static_cache_bytes(model.config, model.dtype, variant.batch_size, max_len) // variant.tp
    except ValueError:
        return roof
    if kept is None:
        if variant.cache == "dynamic" and generation_peak is not None:
            # the generation's peak (record: generation_peak_bytes) beside a static cache of its length
            return Roofline(step, bandwidth, kv_cache_bytes_analytic=expected, note=roof.note)
        return roof
    actual = cache_tensor_bytes(kept)
    if actual != expected:
        notes.append(f"static cache holds {actual:,} bytes, its config says {expected:,}")
    allocation = watch.result(expected) if watch is not None else None
    if allocation is not None and not allocation.matches:
        notes.append(allocation.note())
    allocated = allocation.allocated if allocation is not None else None
    return Roofline(step, bandwidth, actual, expected, allocated, "; ".join(notes))


def draft_bytes(draft: PreTrainedModel, variant: Variant, draft_steps: int) -> tuple[float | None, str]:
    """What one step of ``variant``'s draft model reads (its weights and K/V, as a decode step of its own), and a
    note for the table; a speculative mode's own steps are verify steps of the model (``bytes_per_step``)."""
    try:
        step = decode_bytes(draft, variant.batch_size, variant.prompt_len, max(draft_steps, 1), variant.cache)
    except ValueError as exc:
        return None, f"draft: no roofline ({exc})"
    return step.total, f"a step is a verify step; the draft reads {step.total / 1e6:.3g} MB a draft step"

"""Memory-roofline accounting for autoregressive decoding with transformers (5.23) models.

A decode step is memory bound: it streams every weight once and the K/V it attends over once, and writes one new
K/V position per layer. This module counts those bytes analytically from a model/config and turns a measured step
time into achieved bandwidth.

Cache semantics mirrored from ``transformers/cache_utils.py`` (5.23):

* Layer kinds come from ``get_layer_types_and_kwargs`` (the same helper ``DynamicCache(config=...)`` and
  ``StaticCache`` use): ``full_attention`` layers, ``sliding_attention``/``chunked_attention`` layers (window ``W``
  = ``sliding_window`` or ``attention_chunk_size``) and ``dummy`` layers (KV shared with another layer: no storage).
* ``DynamicSlidingWindowLayer.update`` keeps only the last ``W - 1`` positions (``full[:, :, -W + 1:, :]``) and
  returns ``cat(cache, new)`` to attention, so after ``n`` positions it *holds* ``min(n, W - 1)`` but a decode step
  *reads* ``min(n + 1, W)``. (For ``W == 1`` the slice ``[-0:]`` keeps everything; mirrored here.)
* ``StaticLayer`` preallocates ``max_cache_len`` positions; ``StaticSlidingWindowLayer`` allocates
  ``min(W, max_cache_len)``. Both allocate lazily on the first ``update``. Their ``update`` returns the whole buffer
  and ``get_mask_sizes`` reports the full buffer length, so with eager/SDPA attention every decode step reads the
  whole preallocated buffer (masked), not just the filled part.
* Falcon with ``new_decoder_architecture=True`` broadcasts its ``num_kv_heads`` K/V heads to all
  ``num_attention_heads`` *before* caching, so the cache (and what is read) is MHA-sized; the old architecture with
  ``multi_query=True`` caches a single head.
* Latent attention (DeepSeek-V2/V3, Kimi, GLM-4-MoE-Lite, MiniCPM3, ...: a config with ``kv_lora_rank``) caches the
  compressed latent as one "head" of keys (``kv_lora_rank`` wide) and the shared rotary key as one "head" of values
  (``qk_rope_head_dim`` wide), and expands them to per-head K/V after the cache: a position costs
  ``kv_lora_rank + qk_rope_head_dim`` values a layer, not ``heads x head_dim x 2``.
* ``linear_attention`` and ``conv`` layers (Qwen3-Next, Qwen3.5, LFM2, Jamba's Mamba layers) hold no K/V but a fixed
  recurrent state (conv state, recurrent/SSM state); ``hybrid``/``hybrid_sliding`` layers (Falcon-H1) hold both. The
  state's size is read off the cache's own state tensors (``cache_state_bytes``): a decode step reads it whole and
  writes it whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedConfig, PreTrainedModel

from ..device.bandwidth import MIB, achieved, measure_bandwidth  # re-exported: the roofline's other half
from .weights import weight_layout

__all__ = [
    "MIB",
    "CacheKind",
    "LayerKV",
    "StepBytes",
    "achieved",
    "cache_state_bytes",
    "cache_tensor_bytes",
    "decode_bytes",
    "has_state_layers",
    "kv_bytes_per_token",
    "kv_bytes_read_at",
    "kv_bytes_written_per_step",
    "kv_cache_bytes_held",
    "kv_layer_specs",
    "measure_bandwidth",
    "static_cache_bytes",
    "weight_bytes",
]

CacheKind = Literal["dynamic", "static", "none"]

_FULL_TYPES = frozenset({"full_attention", "hybrid"})  # hybrid: K/V beside a recurrent state (Falcon-H1)
_WINDOW_TYPES = frozenset({"sliding_attention", "chunked_attention", "hybrid_sliding"})
_NO_KV_TYPES = frozenset({"dummy"})
_STATE_ONLY_TYPES = frozenset({"linear_attention", "conv"})  # a recurrent state, no per-token K/V
_STATE_TYPES = _STATE_ONLY_TYPES | {"hybrid", "hybrid_sliding"}


@dataclass(frozen=True)
class LayerKV:
    """K/V geometry of one decoder layer as transformers caches it."""

    layer_type: str
    kv_heads: int
    head_dim: int  # the width of a cached key "head"
    window: int | None  # None: full attention
    v_head_dim: int | None = None  # the width of a cached value "head" (None: head_dim)
    latent: bool = False  # latent attention: the cache holds the compressed latent and the rotary key

    @property
    def has_kv(self) -> bool:
        return self.layer_type not in _NO_KV_TYPES | _STATE_ONLY_TYPES

    @property
    def has_state(self) -> bool:
        """The layer also reads and writes a recurrent state every step (``cache_state_bytes``)."""
        return self.layer_type in _STATE_TYPES

    def bytes_per_position(self, dtype: torch.dtype) -> int:
        """K and V bytes for one position of one sequence."""
        if not self.has_kv:
            return 0
        v_dim = self.head_dim if self.v_head_dim is None else self.v_head_dim
        return self.kv_heads * (self.head_dim + v_dim) * dtype.itemsize

    def positions_held(self, n_positions: int) -> int:
        """Positions a config-aware ``DynamicCache`` layer holds after ``n_positions`` have been processed."""
        if not self.has_kv:
            return 0
        if self.window is None or self.window <= 1:
            return n_positions
        return min(n_positions, self.window - 1)

    def positions_read(self, attended: int) -> int:
        """Positions read by a step whose query attends over ``attended`` positions (itself included)."""
        if not self.has_kv:
            return 0
        return attended if self.window is None else min(attended, self.window)

    def positions_static(self, max_cache_len: int) -> int:
        """Positions a ``StaticCache`` layer preallocates."""
        if not self.has_kv:
            return 0
        return max_cache_len if self.window is None else min(self.window, max_cache_len)


def _cls(config: Any) -> str:
    return type(config).__name__


def _opt_int(cfg: Any, name: str) -> int | None:
    value = getattr(cfg, name, None)
    return None if value is None else int(value)


def _kv_heads(layer_cfg: Any, owner: str) -> int:
    n_heads = _opt_int(layer_cfg, "num_attention_heads")  # attribute_map resolves e.g. GPT-2's n_head
    if n_heads is None:
        raise ValueError(f"{owner}: cannot determine the number of attention heads (no num_attention_heads)")
    if hasattr(layer_cfg, "new_decoder_architecture") and hasattr(layer_cfg, "num_kv_heads"):
        # Falcon: the new architecture broadcasts K/V to all heads before `cache.update` (modeling_falcon.py).
        if layer_cfg.new_decoder_architecture:
            return n_heads
        return 1 if layer_cfg.multi_query else n_heads
    n_kv = _opt_int(layer_cfg, "num_key_value_heads")  # Llama/Mistral/Qwen GQA; GPTBigCode sets it from multi_query
    if n_kv:
        return n_kv
    if getattr(layer_cfg, "multi_query", False):
        return 1
    return n_heads


def _head_dim(layer_cfg: Any, owner: str) -> int:
    head_dim = _opt_int(layer_cfg, "head_dim")
    if head_dim:
        return head_dim
    hidden = _opt_int(layer_cfg, "hidden_size")
    n_heads = _opt_int(layer_cfg, "num_attention_heads")
    if hidden is None or not n_heads:
        raise ValueError(f"{owner}: cannot determine head_dim (no head_dim, hidden_size or num_attention_heads)")
    return hidden // n_heads


def kv_layer_specs(config: PreTrainedConfig) -> list[LayerKV]:
    """Per-layer K/V geometry, using the same layer typing as transformers' cache classes."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    text = config.get_text_config(decoder=True)
    owner = _cls(text)
    try:
        layer_types, layer_kwargs = get_layer_types_and_kwargs(text)
        layer_cfgs = list(text.per_layer_config)
    except AttributeError as exc:
        raise ValueError(f"{owner}: cannot derive decoder layer layout ({exc})") from exc
    if not layer_cfgs:
        raise ValueError(f"{owner}: config has no decoder layers")
    specs: list[LayerKV] = []
    for layer_type, kwargs, layer_cfg in zip(layer_types, layer_kwargs, layer_cfgs, strict=True):
        if layer_type in _NO_KV_TYPES | _STATE_ONLY_TYPES:
            specs.append(LayerKV(layer_type, 0, 0, None))
            continue
        if layer_type not in _FULL_TYPES | _WINDOW_TYPES:
            raise ValueError(f"{owner}: layer type {layer_type!r} has no per-token K/V model here")
        window: int | None = None
        if layer_type in _WINDOW_TYPES:
            raw = kwargs.get("sliding_window")
            if raw is None:
                raise ValueError(f"{owner}: layer type {layer_type!r} without a window size")
            window = int(raw)
        latent = _opt_int(layer_cfg, "kv_lora_rank")
        if latent:  # latent attention: one latent "head" of keys, one shared rotary "head" of values
            rope = _opt_int(layer_cfg, "qk_rope_head_dim")
            if rope is None:
                raise ValueError(f"{owner}: latent attention (kv_lora_rank) without qk_rope_head_dim")
            specs.append(LayerKV(layer_type, 1, latent, window, v_head_dim=rope, latent=True))
            continue
        specs.append(LayerKV(layer_type, _kv_heads(layer_cfg, owner), _head_dim(layer_cfg, owner), window))
    return specs


def has_state_layers(config: PreTrainedConfig) -> bool:
    """Whether some layer holds a recurrent state (linear attention, conv, SSM) that each step reads and writes."""
    try:
        return any(spec.has_state for spec in kv_layer_specs(config))
    except ValueError:
        return False


def kv_bytes_per_token(config: PreTrainedConfig, dtype: torch.dtype) -> int:
    """K/V bytes one position adds across all layers (one sequence): sum of layers x kv_heads x head_dim x 2 x size."""
    return sum(spec.bytes_per_position(dtype) for spec in kv_layer_specs(config))


def kv_bytes_read_at(config: PreTrainedConfig, dtype: torch.dtype, position: int, batch: int = 1) -> int:
    """K/V bytes read by a step whose query attends over ``position`` positions (the new one included).

    Full layers read ``position`` positions, windowed layers ``min(position, W)``; a decode step with ``n`` cached
    positions has ``position = n + 1``. This is exactly what ``DynamicCache.update`` hands to attention.
    """
    if position < 0 or batch < 0:
        raise ValueError("position and batch must be non-negative")
    return batch * sum(s.bytes_per_position(dtype) * s.positions_read(position) for s in kv_layer_specs(config))


def kv_bytes_written_per_step(config: PreTrainedConfig, dtype: torch.dtype, batch: int = 1) -> int:
    """K/V bytes one single-token decode step writes: one position per layer (windowed layers too)."""
    return batch * kv_bytes_per_token(config, dtype)


def kv_cache_bytes_held(config: PreTrainedConfig, dtype: torch.dtype, n_positions: int, batch: int = 1) -> int:
    """Bytes held by ``DynamicCache(config=...)`` after ``n_positions`` positions (windowed layers keep ``W - 1``)."""
    if n_positions < 0 or batch < 0:
        raise ValueError("n_positions and batch must be non-negative")
    return batch * sum(s.bytes_per_position(dtype) * s.positions_held(n_positions) for s in kv_layer_specs(config))


def static_cache_bytes(config: PreTrainedConfig, dtype: torch.dtype, batch: int, max_cache_len: int) -> int:
    """Bytes ``StaticCache(config, max_cache_len)`` allocates (windowed layers: ``min(W, max_cache_len)``)."""
    if max_cache_len < 0 or batch < 0:
        raise ValueError("max_cache_len and batch must be non-negative")
    return batch * sum(s.bytes_per_position(dtype) * s.positions_static(max_cache_len) for s in kv_layer_specs(config))


def cache_tensor_bytes(cache: Any) -> int:
    """What a transformers ``Cache`` holds now: the ``nbytes`` of its layers' key and value tensors."""
    return sum(
        int(t.nbytes)
        for layer in getattr(cache, "layers", ())
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
        if isinstance(t, torch.Tensor)
    )


def cache_state_bytes(cache: Any) -> int:
    """The recurrent state a transformers ``Cache`` holds now: its layers' conv and recurrent (SSM) state tensors."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for name in ("conv_states", "recurrent_states"):
            states = getattr(layer, name, None)
            if isinstance(states, dict):
                total += sum(int(t.nbytes) for t in states.values() if isinstance(t, torch.Tensor))
    return total


def weight_bytes(model: torch.nn.Module) -> int:
    """Parameter bytes the model holds (resident), tied/aliased storage counted once.

    Not what a step reads: ``weights.weight_layout`` splits it into dense, gathered and routed bytes.
    """
    return weight_layout(model).resident


@dataclass(frozen=True)
class StepBytes:
    """Mean bytes a decode step must move over one generation, by what moves them."""

    cache: str
    steps: int
    weights: float  # read: dense matrices and the LM head whole, gathered embedding rows, the experts routed to
    kv_read: float
    kv_written: float
    note: str = ""
    state: float = 0.0  # recurrent state (linear attention, conv, SSM layers) read whole and written whole
    weights_resident: int = 0  # the parameters the model holds
    active_experts: float | None = None  # routed experts read per step, all MoE layers (None: no MoE layer)
    routed_experts: int | None = None  # routed experts the model holds, all MoE layers

    @property
    def kv(self) -> float:
        return self.kv_read + self.kv_written

    @property
    def total(self) -> float:
        return self.weights + self.kv_read + self.kv_written + self.state


def decode_bytes(
    model: PreTrainedModel,
    batch: int,
    prompt_len: int,
    steps: int,
    cache: str,
    *,
    max_cache_len: int | None = None,
    kv_dtype: torch.dtype | None = None,
    active_experts: Sequence[float] | None = None,
    state_bytes: int | None = None,
) -> StepBytes:
    """Mean bytes per single-token decode step after a ``prompt_len`` prefill, over ``steps`` steps.

    Step ``i`` (0-based) starts with ``prompt_len + i`` cached positions. ``dynamic``: reads the attended window
    (``kv_bytes_read_at(prompt_len + i + 1)``). ``static``: reads the whole preallocated buffer every step
    (``max_cache_len`` defaults to ``prompt_len + steps``). Both write one position per layer. ``none``: no cache,
    the whole sequence is recomputed each step; only weights are counted.

    Weights (``weights.weight_layout``): dense matrices whole, ``batch`` rows of each embedding table (``none``: a
    row per token of the sequence), and per MoE layer ``active_experts[layer]`` experts (the mean distinct experts a
    step ran, ``routing.py``; None: every expert, an upper bound). ``state_bytes``: the recurrent state the cache
    holds (``cache_state_bytes``), read and written whole each step; required when a layer holds one.
    """
    if batch < 1 or prompt_len < 1 or steps < 1:
        raise ValueError("batch, prompt_len and steps must be >= 1")
    dtype = kv_dtype if kv_dtype is not None else model.dtype
    config = model.config
    layout = weight_layout(model)
    moe = bool(layout.experts)
    counted = float(sum(active_experts) if active_experts is not None else layout.routed_experts) if moe else None

    def step(weights: float, kv_read: float, kv_written: float, note: str, state: float = 0.0) -> StepBytes:
        routed = layout.routed_experts if moe else None
        return StepBytes(cache, steps, weights, kv_read, kv_written, note, state, layout.resident, counted, routed)

    if cache == "none":
        tokens = batch * (prompt_len + (steps + 1) / 2)  # decode step i re-runs prompt_len + i + 1 positions
        note = "no KV cache: each step re-runs the whole sequence, only weight bytes counted (recompute ignored)"
        return step(layout.per_step(tokens, active_experts), 0.0, 0.0, note)
    weights = layout.per_step(batch, active_experts)
    state = 0.0
    stateful = sorted({s.layer_type for s in kv_layer_specs(config) if s.has_state})
    if stateful:
        if state_bytes is None:
            raise ValueError(f"{_cls(config)}: layer type {stateful[0]!r} holds a recurrent state not observed here")
        state = 2.0 * state_bytes
    written = float(kv_bytes_written_per_step(config, dtype, batch))
    if cache == "dynamic":
        total_read = sum(kv_bytes_read_at(config, dtype, prompt_len + i + 1, batch) for i in range(steps))
        note = "reads the attended window (full layers: all positions; sliding: min(p, W))"
        return step(weights, total_read / steps, written, note, state)
    if cache == "static":
        length = prompt_len + steps if max_cache_len is None else max_cache_len
        if length < prompt_len + steps:
            raise ValueError(f"max_cache_len={length} < prompt_len + steps = {prompt_len + steps}")
        read = float(static_cache_bytes(config, dtype, batch, length))
        note = f"reads the whole preallocated buffer (max_cache_len={length}) every step"
        return step(weights, read, written, note, state)
    raise ValueError(f"cache must be 'dynamic', 'static' or 'none', got {cache!r}")

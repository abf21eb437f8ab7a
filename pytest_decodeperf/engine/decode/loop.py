"""The one decode loop. Cache strategy and stop policy are its parameters.

Phases follow gpt-fast: ``prefill`` (the prompt, yielding the first token), ``decode_one_token``,
and ``generate``, which runs them with a stop policy. Finished rows get the pad token after their
EOS, as transformers' generate() does, so every policy returns the same tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Cache, PreTrainedModel

from ...errors import DecodePerfError
from ..device.runtime import DeviceRuntime
from ..measure.nvtx import NULL_TRACER, Tracer
from ..measure.syncs import SyncCounter
from .caches import CacheSlot, cache_keyword
from .hidden_syncs import full_causal_mask
from .masks import PaddedBatch, takes_position_ids
from .stream_modes import StopPolicy

_NULL = contextlib.nullcontext()


@dataclass
class DecodeOutput:
    """What one generation produced.

    ``tokens``: [B, P + n] prompt and generated tokens, trimmed to the step at which every row had
    finished (or to max_new_tokens). ``steps``: forward passes run, prefill included. ``extra_steps``:
    steps launched after the last one kept (a lagged policy's look-ahead; nostop's run-on).
    """

    tokens: torch.Tensor
    prompt_len: int
    steps: int
    extra_steps: int
    host_reads: int
    note: str = ""

    @property
    def generated(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len :]

    @property
    def new_tokens(self) -> int:
        return int(self.tokens.shape[1]) - self.prompt_len


def forward_next_token(
    model: PreTrainedModel,
    inputs: torch.Tensor,
    cache: Cache | None,
    causal_mask: bool = False,
    padded: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Greedy next token for each row. inputs: [B, T] -> [B].

    ``causal_mask``: pass a ready 4-D causal mask (the cache-less loop): without one, transformers'
    masking code reads a device tensor on the host (``(...).all()`` in a Python ``if``) every forward.
    ``padded``: a left-padded batch's mask and positions for this forward (``masks.PaddedBatch``).
    """
    extra: dict[str, Any] = dict(padded) if padded is not None else {}
    if causal_mask and padded is None:
        batch, length = inputs.shape
        extra["attention_mask"] = full_causal_mask(batch, length, _float_dtype(model), inputs.device)  # [B,1,T,T]
    extra[cache_keyword(model) or "past_key_values"] = cache
    out = model(inputs, use_cache=cache is not None, **extra)
    logits = out.logits[:, -1, :]  # [B, V]
    return torch.argmax(logits, dim=-1)


def _float_dtype(model: PreTrainedModel) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def prefill(
    model: PreTrainedModel,
    prompts: torch.Tensor,
    cache: Cache | None,
    causal_mask: bool = False,
    padded: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Run the prompt [B, P] through the model: the first generated token [B]."""
    return forward_next_token(model, prompts, cache, causal_mask, padded)


def decode_one_token(
    model: PreTrainedModel,
    seq: torch.Tensor,
    length: int,
    cache: Cache | None,
    full_sequence: bool,
    causal_mask: bool = False,
    padded: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Next token [B] given seq[:, :length]; the naive loop feeds it all, a cached one the last token."""
    inputs = seq[:, :length] if full_sequence else seq[:, length - 1 : length]  # [B, T] or [B, 1]
    return forward_next_token(model, inputs, cache, causal_mask, padded)


def generate(
    model: PreTrainedModel,
    prompts: torch.Tensor,
    max_new_tokens: int,
    cache_slot: CacheSlot,
    policy: StopPolicy,
    eos_ids: torch.Tensor,
    pad_id: int,
    tracer: Tracer = NULL_TRACER,
    on_prefill: Callable[[], None] | None = None,
    syncs: SyncCounter | None = None,
    runtime: DeviceRuntime | None = None,
    causal_mask: bool = False,
    attention_mask: torch.Tensor | None = None,
    ready_mask: bool = False,
    on_step: Callable[[], None] | None = None,
) -> DecodeOutput:
    """Greedy-decode up to ``max_new_tokens`` per row of ``prompts`` [B, P].

    ``eos_ids`` [E] (on the model's device) are the stop tokens; empty means run to the end.
    ``on_prefill`` is called on the prefill's stream right after it is launched (for timing), ``on_step`` on each
    decode step's stream right after it is launched (per-step timing: it must not read the device).
    ``syncs``: a counter that attributes blocking reads to steps; the stop check's read is declared.
    ``runtime``: the device seam (default: the device's own; tests pass the CUDA simulator).
    ``causal_mask``: without a cache, pass a ready 4-D causal mask (no host read in transformers'
    masking code); only for models that give the same logits with it (``hidden_syncs.accepts_causal_mask``).
    ``attention_mask`` [B, P]: a left-padded batch (1 = real token); every forward then gets the mask
    and positions generate() would pass (``masks.PaddedBatch``), as a ready 4-D mask when ``ready_mask``.
    """
    batch, prompt_len = prompts.shape
    total = prompt_len + max_new_tokens
    cache_slot.check_capacity(total)
    device = prompts.device
    # One preallocated sequence buffer: no per-step torch.cat (the article's fragmentation source).
    seq = torch.full((batch, total), pad_id, dtype=torch.long, device=device)  # [B, P + N]
    seq[:, :prompt_len] = prompts
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
    pad = torch.full((), pad_id, dtype=torch.long, device=device)  # no pageable H2D copy, unlike torch.tensor
    cache = cache_slot.fresh()
    full_sequence = cache_slot.strategy.feeds_full_sequence
    causal_mask = causal_mask and full_sequence
    padded: PaddedBatch | None = None
    if attention_mask is not None:
        kv_total = cache_slot.max_len if cache_slot.strategy.preallocated else total
        padded = PaddedBatch(
            attention_mask.to(device), total, kv_total, ready_mask, _float_dtype(model), takes_position_ids(model)
        )

    run = policy.start(device, runtime)
    stopped_after: int | None = None  # index of the last step kept when a stop was read
    steps = 0
    with tracer.generation():
        for step in range(max_new_tokens):
            tracer.on_step(step)
            if syncs is not None:
                syncs.step(step)
            length = prompt_len + step
            with tracer.range(f"step {step}"), run.launch(step):
                with tracer.range("forward", "green"):
                    if step == 0:
                        kwargs = _padded_kwargs(padded, 0, prompt_len, cache_slot)
                        token = prefill(model, prompts, cache, causal_mask, kwargs)
                    else:
                        start = 0 if full_sequence else length - 1
                        kwargs = _padded_kwargs(padded, start, length, cache_slot)
                        token = decode_one_token(model, seq, length, cache, full_sequence, causal_mask, kwargs)
                # Rows that already finished emit pad; then a row finishes on an EOS.
                token = torch.where(finished, pad, token)  # [B]
                seq[:, length] = token
                finished |= torch.isin(token, eos_ids)
                run.publish(step, finished.all())
                if step == 0 and on_prefill is not None:
                    on_prefill()
                elif step > 0 and on_step is not None:
                    on_step()
            steps += 1
            with tracer.range("stop check", "red"), syncs.declared() if syncs is not None else _NULL:
                if run.should_stop(step):
                    stopped_after = policy.read_slot(step)
                    break
        run.finish()
    if syncs is not None:
        syncs.outside()  # what follows is after the loop, in no step

    kept = max_new_tokens if stopped_after is None else stopped_after + 1
    if policy.lag is None and eos_ids.numel() > 0:
        kept = _steps_until_all_finished(seq[:, prompt_len:], eos_ids, max_new_tokens)
    if kept > steps:
        raise DecodePerfError(f"stop policy {policy.name!r} kept {kept} steps but ran only {steps}")
    tokens = seq[:, : prompt_len + kept]
    return DecodeOutput(
        tokens=tokens,
        prompt_len=prompt_len,
        steps=steps,
        extra_steps=steps - kept,
        host_reads=run.host_reads,
        note=run.note,
    )


def _padded_kwargs(padded: PaddedBatch | None, start: int, end: int, slot: CacheSlot) -> dict[str, Any] | None:
    """The padded batch's mask and positions for a forward over [start, end) (None: not padded)."""
    if padded is None:
        return None
    return padded.forward_kwargs(start, end, slot.max_len if slot.strategy.preallocated else end)


def _steps_until_all_finished(generated: torch.Tensor, eos_ids: torch.Tensor, limit: int) -> int:
    """For a policy that never stops: the step count a stopping policy would have kept."""
    is_eos = torch.isin(generated, eos_ids)  # [B, N]
    if not bool(is_eos.any(dim=1).all()):
        return limit
    first = is_eos.int().argmax(dim=1)  # [B]: first EOS per row
    return int(first.max()) + 1

"""The plugin's decode loop. Cache strategy and stop policy are its parameters.

Phases follow gpt-fast: ``prefill`` (the prompt, yielding the first token), ``decode_one_token``,
and ``generate``, which runs them with a stop policy. Finished rows get the pad token after their
EOS, as transformers' generate() does, so every policy returns the same tokens. Every forward is called
the way generate() calls it (``forward.py``), and an observer (``observe.py``) hears each step: the clock, the
sync counter and NVTX hook in there, so the loop knows nothing of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from transformers import Cache, PreTrainedModel

from ...errors import DecodePerfError
from ..device.runtime import DeviceRuntime
from .caches import CacheSlot
from .forward import ForwardCall
from .observe import NULL_OBSERVER, Observer
from .request import DecodeOutput, Request, kept_steps
from .stream_modes import StopPolicy

__all__ = ["DecodeOutput", "decode_one_token", "generate", "prefill"]


def prefill(model: PreTrainedModel, prompts: torch.Tensor, cache: Cache | None, call: ForwardCall) -> torch.Tensor:
    """Run the prompt [B, P] through the model: the first generated token [B]."""
    return call.next_token(model, prompts, 0, cache)


def decode_one_token(
    model: PreTrainedModel, seq: torch.Tensor, length: int, cache: Cache | None, call: ForwardCall
) -> torch.Tensor:
    """Next token [B] given seq[:, :length]; the cache-less loop feeds it all, a cached one the last token."""
    start = 0 if call.full_sequence else length - 1
    return call.next_token(model, seq[:, start:length], start, cache)  # inputs [B, T] or [B, 1]


def generate(
    model: PreTrainedModel,
    request: Request,
    cache_slot: CacheSlot,
    policy: StopPolicy,
    observer: Observer = NULL_OBSERVER,
    runtime: DeviceRuntime | None = None,
    ready_mask: bool = False,
) -> DecodeOutput:
    """Greedy-decode ``request`` (prompts, stops, length) with ``cache_slot``'s cache and ``policy``'s stop check.

    ``observer`` hears every step (``observe.py``); the stop check's read is declared to it. ``runtime``: the
    device seam (default: the device's own; tests pass the CUDA simulator). ``ready_mask``: the model gives the
    same logits with a ready 4-D mask (``refusals.accepts_causal_mask``), which then replaces transformers'
    own masking and its host read (a padded batch, the cache-less loop).
    """
    if not isinstance(request, Request):  # a call written for 0.2: (model, prompts, max_new_tokens, slot, policy, ...)
        raise TypeError(
            "generate(model, request, cache_slot, policy, observer=..., runtime=...) takes a Request since "
            "pytest-decodeperf 0.3: Request(prompts, eos_ids, pad_id, max_new_tokens, attention_mask)"
        )
    prompts, eos_ids, max_new_tokens = request.prompts, request.eos_ids, request.max_new_tokens
    batch, prompt_len = prompts.shape
    total = prompt_len + max_new_tokens
    cache_slot.check_capacity(total)
    device = prompts.device
    # One preallocated sequence buffer: no per-step torch.cat (the article's fragmentation source).
    seq = torch.full((batch, total), request.pad_id, dtype=torch.long, device=device)  # [B, P + N]
    seq[:, :prompt_len] = prompts
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
    pad = torch.full((), request.pad_id, dtype=torch.long, device=device)  # no pageable H2D copy, unlike torch.tensor
    cache = cache_slot.fresh()
    strategy = cache_slot.strategy
    call = ForwardCall(
        model,
        batch,
        total,
        device,
        request.attention_mask,
        cache_slot.max_len if strategy.preallocated else None,
        ready_mask,
        strategy.feeds_full_sequence,
    )
    run = policy.start(device, runtime)
    stopped_after: int | None = None  # index of the last step kept when a stop was read
    steps = 0

    def step(index: int, forward: Callable[[], torch.Tensor]) -> bool:
        """Launch step ``index`` on its stream, then ask the policy whether to stop: True to stop."""
        nonlocal steps, stopped_after
        observer.begin_step(index)
        with observer.range(f"step {index}"), run.launch(index):
            with observer.range("forward", "green"):
                token = forward()
            # Rows that already finished emit pad; then a row finishes on an EOS.
            token = torch.where(finished, pad, token)  # [B]
            seq[:, prompt_len + index] = token
            finished.bitwise_or_(torch.isin(token, eos_ids))
            if run.policy.lag is not None:  # nostop reads no flag: no reduction launched for it either
                run.publish(index, finished.all())
            observer.launched(index)  # on the step's stream, right after its launch (timing marks)
        steps += 1
        with observer.range("stop check", "red"), observer.stop_check():
            if run.should_stop(index):
                stopped_after = policy.read_slot(index)
                return True
        return False

    with observer.generation():
        stop = step(0, lambda: prefill(model, prompts, cache, call))
        index = 1
        while not stop and index < max_new_tokens:
            stop = step(index, functools.partial(decode_one_token, model, seq, prompt_len + index, cache, call))
            index += 1
        run.finish()
    observer.end()  # what follows is after the loop, in no step

    kept = max_new_tokens if stopped_after is None else stopped_after + 1
    if policy.lag is None and eos_ids.numel() > 0:
        kept = kept_steps(seq[:, prompt_len:], eos_ids)
    if kept > steps:
        raise DecodePerfError(f"stop policy {policy.name!r} kept {kept} steps but ran only {steps}")
    return DecodeOutput(
        tokens=seq[:, : prompt_len + kept],
        prompt_len=prompt_len,
        steps=steps,
        extra_steps=steps - kept,
        host_reads=run.host_reads,
        note=run.note,
    )

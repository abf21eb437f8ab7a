"""The hidden host reads transformers 5.x makes in a decode step, removed for the engine's own calls.

Counted by ``syncs.py``; each one drains the GPU before the step can start, so the pipelined mode
cannot gain while it is there. Neither change leaks into the user's code: the padding check is
shadowed on one model instance for the duration of a ``with``, and the causal mask is an argument.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_PADDING_CHECK = "warn_if_padding_and_no_attention_mask"


def _skip_padding_check(input_ids: object, attention_mask: object) -> None:
    return None


@contextmanager
def no_padding_check(model: torch.nn.Module) -> Iterator[None]:
    """Skip ``PreTrainedModel.warn_if_padding_and_no_attention_mask`` on this model instance only.

    The check (transformers ``modeling_utils``) does ``pad_token_id in input_ids[:, [-1, 0]]``: a
    host read every forward (GPT-2's ``GPT2Model.forward`` calls it on ``model.transformer``). An
    instance attribute shadows the class method for ``model`` and its submodules; other instances
    and user code are untouched, and the attributes are removed (or restored) on exit.
    """
    saved: list[tuple[torch.nn.Module, object | None]] = []
    for module in model.modules():
        if not callable(getattr(type(module), _PADDING_CHECK, None)):
            continue
        saved.append((module, module.__dict__.get(_PADDING_CHECK)))
        object.__setattr__(module, _PADDING_CHECK, _skip_padding_check)
    try:
        yield
    finally:
        for module, previous in saved:
            if previous is None:
                module.__dict__.pop(_PADDING_CHECK, None)
            else:
                object.__setattr__(module, _PADDING_CHECK, previous)


def full_causal_mask(batch: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A ready 4-D additive causal mask [B, 1, T, T] (0 = attend, dtype-min = masked).

    transformers ``masking_utils._preprocess_mask_arguments`` returns a 4-D mask as-is, before
    ``find_packed_sequence_indices`` (whose ``(packed_sequence_mask[:, -1] == 0).all()`` is a host
    read on every cache-less forward). Additive float works for both the sdpa and eager paths.
    """
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)  # [T, T]
    mask = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)
    return mask.expand(batch, 1, length, length)

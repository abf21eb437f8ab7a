"""Every forward of a generation called one way: the way transformers' generate() calls it.

generate() passes ``position_ids`` to every forward of a model that takes them (from the attention mask:
``cumsum - 1``, so a left-padded row counts from its first real token), the attention mask when the batch is
padded, and the cache by the keyword the forward takes. A forward that derives something from its positions (a
hybrid state-space model among them) gives other logits without them. The decode loop, the cache probe
(``refusals.py``) and a user's decoder (``custom.py``'s ``DecoderInputs``) all build their forwards here, so
none of them judges a model called differently from the others.

What is passed is made before step 0 and sliced per step, with no host read and no allocation in a step:
positions are a buffer; a padded batch's mask comes from ``masks.PaddedBatch`` (a ready 4-D mask for a model
that takes one, else generate()'s 2-D mask); the cache-less loop passes a ready causal mask when the model takes
one (without it transformers' masking reads a device tensor on the host every forward).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Cache

from .caches import cache_keyword
from .hidden_syncs import full_causal_mask
from .masks import PaddedBatch, takes_position_ids


def float_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (a ready mask is built in it)."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


class ForwardCall:
    """The keyword arguments of every forward of one generation of ``total`` positions, ``batch`` rows.

    ``attention_mask`` [B, P]: a left-padded prompt (None: no padding). ``kv_total``: a preallocated cache's
    length (its keys span it), else None. ``ready_mask``: the model gives the same logits with a ready 4-D mask
    (``refusals.accepts_causal_mask``); a padded batch then gets one instead of the 2-D mask, and the
    cache-less loop (``full_sequence``) a causal one.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batch: int,
        total: int,
        device: torch.device,
        attention_mask: torch.Tensor | None = None,
        kv_total: int | None = None,
        ready_mask: bool = False,
        full_sequence: bool = False,
    ):
        self.keyword = cache_keyword(model) or "past_key_values"
        self.dtype = float_dtype(model)
        self.batch = batch
        self.device = device
        self.full_sequence = full_sequence
        self.causal = ready_mask and full_sequence and attention_mask is None
        self.padded: PaddedBatch | None = None
        self.kv_total = kv_total
        self.positions: torch.Tensor | None = None  # [B, T] (a view of one row when not padded)
        if attention_mask is not None:
            self.padded = PaddedBatch(
                attention_mask.to(device),
                total,
                kv_total if kv_total is not None else total,
                ready_mask,
                self.dtype,
                takes_position_ids(model),
            )
            self.positions = self.padded.positions
        elif takes_position_ids(model):
            self.positions = torch.arange(total, device=device).expand(batch, total)

    def kwargs(self, start: int, end: int, cache: Cache | None) -> dict[str, Any]:
        """What a forward over positions [start, end) gets besides the input ids."""
        out: dict[str, Any] = {}
        if self.padded is not None:
            kv_length = self.kv_total if self.kv_total is not None else end
            out.update(self.padded.forward_kwargs(start, end, kv_length))
        elif self.positions is not None:
            out["position_ids"] = self.positions[:, start:end]
        if self.causal:
            out["attention_mask"] = full_causal_mask(self.batch, end - start, self.dtype, self.device)
        out[self.keyword] = cache
        out["use_cache"] = cache is not None
        return out

    def next_token(self, model: Any, inputs: torch.Tensor, start: int, cache: Cache | None) -> torch.Tensor:
        """Greedy next token of each row. inputs: [B, T], the positions [start, start + T) -> [B]."""
        end = start + int(inputs.shape[1])
        out = model(inputs, **self.kwargs(start, end, cache))
        logits = out.logits[:, -1, :]  # [B, V]
        return torch.argmax(logits, dim=-1)

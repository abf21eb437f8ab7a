"""Left-padded batches: the attention mask and positions generate() passes, built before the loop.

Real serving decodes prompts of different lengths in one batch, left padded. generate() then
passes a 2-D mask (1 = real token) that grows by one column a step, and position ids counted from
each row's first real token (``attention_mask.cumsum(-1) - 1``). The decode loop passes the same,
with no host read in a step: positions and the padding are buffers made before step 0, sliced per step.

transformers turns a 2-D mask into a 4-D one on every forward, and on the sdpa path it first asks
``fast_all(padding_mask)`` in a Python ``if``: a blocking read each step. So for a model that takes
a ready 4-D mask (``refusals.accepts_causal_mask``: full causal attention, not ALiBi) the loop
passes a 4-D additive mask instead. A model that does not (sliding windows,
ALiBi) gets the 2-D mask and keeps transformers' read: it shows in the sync count.
"""

from __future__ import annotations

from typing import Any

import torch

from .caches import forward_parameters


def takes_position_ids(model: Any) -> bool:
    """Whether ``model``'s forward takes ``position_ids`` (generate() passes them only then)."""
    return "position_ids" in forward_parameters(model)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids -> (ids [B, P], mask [B, P]), left padded to the longest row with ``pad_id``."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row) :] = 1
    return ids, mask


class PaddedBatch:
    """Masks and positions of one left-padded generation of ``total`` positions.

    ``prompt_mask`` [B, P]: 1 for a real prompt token, 0 for padding. ``kv_total``: the key length
    of a preallocated cache (its ``max_cache_len``), else ``total``. ``ready``: give forwards a 4-D
    additive mask; else the 2-D one. ``positions``: the model takes ``position_ids``.

    Made once per generation, before step 0: the [B, T] padding mask, the positions, and the 4-D mask
    rows of the decode steps' queries ([B, 1, T - P, KV]: the new tokens' rows only), so a decode step's
    mask is a view, with no kernel and no allocation in the step. The prompt's (and the cache-less
    loop's, which re-runs the whole sequence anyway) is built for its own queries, as transformers
    builds its own: never a whole [B, 1, T, T], which grows with the square of the length.
    """

    def __init__(
        self,
        prompt_mask: torch.Tensor,
        total: int,
        kv_total: int,
        ready: bool,
        dtype: torch.dtype,
        positions: bool,
    ):
        batch, prompt_len = prompt_mask.shape
        device = prompt_mask.device
        seen = torch.ones(batch, total, dtype=torch.long, device=device)  # [B, T]: generated tokens are real
        seen[:, :prompt_len] = prompt_mask
        self.mask2d = seen
        # generate(): cumsum - 1, pads at 0 (their outputs are never attended to)
        self.positions = (seen.cumsum(-1) - 1).masked_fill(seen == 0, 0) if positions else None  # [B, T]
        self.dtype = dtype
        self.prompt_len = prompt_len
        self.keys: torch.Tensor | None = None  # [B, KV]: which key positions are real tokens
        self.step_rows: torch.Tensor | None = None  # [B, 1, T - P, KV]: the decode steps' mask rows
        if ready:
            width = max(kv_total, total)
            keys = torch.zeros(batch, width, dtype=torch.bool, device=device)
            keys[:, :total] = seen.bool()
            self.keys = keys
            self.step_rows = self._build(prompt_len, total, width)

    def _build(self, start: int, end: int, kv_length: int) -> torch.Tensor:
        """The 4-D additive mask [B, 1, end - start, kv_length] of queries [start, end): causal and unpadded."""
        assert self.keys is not None
        device = self.keys.device
        q = torch.arange(start, end, device=device)  # a kernel with host scalars: no copy, no read
        k = torch.arange(kv_length, device=device)
        allowed = (k[None, :] <= q[:, None])[None] & self.keys[:, None, :kv_length]  # [B, q, KV]
        mask = torch.zeros(allowed.shape[0], 1, end - start, kv_length, dtype=self.dtype, device=device)
        return mask.masked_fill_(~allowed[:, None], torch.finfo(self.dtype).min)

    def ready_mask(self, start: int, end: int, kv_length: int) -> torch.Tensor:
        """The 4-D mask of queries [start, end): a decode step's is a view of ``step_rows``."""
        assert self.step_rows is not None
        if end - start == 1 and start >= self.prompt_len:
            row = start - self.prompt_len
            return self.step_rows[:, :, row : row + 1, :kv_length]
        return self._build(start, end, kv_length)

    def forward_kwargs(self, start: int, end: int, kv_length: int) -> dict[str, Any]:
        """Keyword arguments of a forward over positions [start, end) with ``kv_length`` keys."""
        out: dict[str, Any] = {}
        if self.positions is not None:
            out["position_ids"] = self.positions[:, start:end]
        if self.keys is not None:
            out["attention_mask"] = self.ready_mask(start, end, kv_length)
        else:
            out["attention_mask"] = self.mask2d[:, :end]  # as generate() passes it: every token seen so far
        return out

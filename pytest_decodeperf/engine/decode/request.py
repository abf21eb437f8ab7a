"""What a generation is asked for, and what it returns: the two values every generation of the seam shares.

A ``Request`` is prompts, stops and a length, nothing about how they were made (``spec/workload.py`` makes them,
with real stops at known steps, as a ``Workload``, which is a ``Request``). A ``DecodeOutput`` is the tokens a
generation produced and the steps it ran; ``row_lengths`` is where each row's generation ends (its first EOS),
the one rule the loop's trimming and the parity check both follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Request:
    """Greedy-decode up to ``max_new_tokens`` per row of ``prompts`` [B, P].

    ``eos_ids`` [E] (on the model's device) are the stop tokens, empty: run to the end; a row that stopped
    emits ``pad_id`` from then on, as transformers' generate() does. ``attention_mask`` [B, P]: a left-padded
    batch (1 = real token); None: every prompt token is real.
    """

    prompts: torch.Tensor
    eos_ids: torch.Tensor
    pad_id: int
    max_new_tokens: int
    attention_mask: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.prompts.shape[0])

    @property
    def prompt_len(self) -> int:
        return int(self.prompts.shape[1])


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


def row_lengths(generated: torch.Tensor, eos_ids: list[int] | torch.Tensor) -> tuple[int, ...]:
    """Per-row generated length up to and including the first EOS (full width if none)."""
    eos = torch.as_tensor(eos_ids, dtype=torch.long).to(generated.device)
    is_eos = torch.isin(generated, eos)
    width = int(generated.shape[1])
    first = torch.where(
        is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, torch.full_like(is_eos[:, 0], width, dtype=torch.long)
    )
    return tuple(int(x) for x in first.tolist())


def kept_steps(generated: torch.Tensor, eos_ids: torch.Tensor) -> int:
    """The steps a generation that stops keeps: until its last row's first EOS (the full width if a row has none)."""
    if eos_ids.numel() == 0:
        return int(generated.shape[1])
    return max(row_lengths(generated, eos_ids), default=0)

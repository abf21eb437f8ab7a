"""What a generation is asked for, and what it returns: the two values every generation of the seam shares.

A ``Request`` is prompts, stops and a length, nothing about how they were made (``spec/workload.py`` makes them,
with real stops at known steps, as a ``Workload``, which is a ``Request``). A ``DecodeOutput`` is the tokens a
generation produced and the steps it ran; ``row_lengths`` is where each row's generation ends (its first EOS),
the one rule the loop's trimming and the parity check both follow.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Any

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

    @functools.cached_property
    def host_eos_ids(self) -> tuple[int, ...]:
        """``eos_ids`` on the host, read from the device once per request (not in every timed round)."""
        return tuple(int(t) for t in self.eos_ids.tolist())


@dataclass(frozen=True)
class Speculation:
    """What speculative decoding did in one generation, counted where generate() decides it.

    ``verify_steps``: the model's forwards (each verifies the proposed tokens and yields one more); ``proposed``:
    the tokens proposed in all (by a draft model or the prompt lookup); ``accepted``: those the verifier kept (its
    ``n_matches``); ``draft_steps``: the draft model's forwards (0 for prompt lookup).
    """

    verify_steps: int
    proposed: int
    accepted: int
    draft_steps: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None

    @property
    def mean_accepted_length(self) -> float | None:
        """Tokens a verify step yields on average: the accepted proposals plus the verifier's own (vLLM's figure)."""
        return 1.0 + self.accepted / self.verify_steps if self.verify_steps else None

    def fields(self) -> dict[str, Any]:
        """The record's speculation counts (``records.ResultRecord``)."""
        return {
            "verify_steps": self.verify_steps,
            "draft_steps": self.draft_steps,
            "proposed_tokens": self.proposed,
            "accepted_tokens": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_length": self.mean_accepted_length,
        }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Serving:
    """One run of a request queue: per request its TTFT and TPOT (ms), every inter-token gap, the occupancy of every
    step, the tokens made and the wall time from the first request queued to the last finished. ``kv_blocks``: the
    blocks the paged cache was given (sized here for the requests, ``page_size`` tokens each), not a count of use."""

    requests: int
    concurrency: int
    ttft_ms: tuple[float, ...]
    tpot_ms: tuple[float, ...]  # requests of a single token have none
    itl_ms: tuple[float, ...]
    occupancy: tuple[int, ...]
    tokens: int
    wall_s: float
    kv_blocks: int
    page_size: int = 16

    @property
    def throughput(self) -> float:
        """Tokens generated per second of the run, every request's."""
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")

    def fields(self) -> dict[str, Any]:
        """The record's serving fields (``records.ResultRecord``)."""
        ttft, tpot = list(self.ttft_ms), list(self.tpot_ms)
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "throughput_tokens_per_s": self.throughput,
            **{f"request_ttft_p{q}_ms": _percentile(ttft, q) for q in (50, 90, 99)},
            **{f"tpot_p{q}_ms": _percentile(tpot, q) for q in (50, 90, 99)},
            "request_itl_p99_ms": _percentile(list(self.itl_ms), 99),
            "occupancy_mean": statistics.fmean(self.occupancy) if self.occupancy else None,
            "occupancy_max": max(self.occupancy, default=None),
            "kv_blocks": self.kv_blocks,
            "kv_block_tokens": self.page_size,
        }


SERVING_FIELDS = tuple(
    Serving(0, 0, (), (), (), (), 0, 0.0, 0).fields()
)  # the record's keys, for a variant that does not serve


SPECULATION_FIELDS = (
    "verify_steps",
    "draft_steps",
    "proposed_tokens",
    "accepted_tokens",
    "acceptance_rate",
    "mean_accepted_length",
)


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
    speculation: Speculation | None = None  # speculative decoding: what was proposed and what the verifier kept
    serving: Serving | None = None  # continuous batching: per request TTFT and TPOT, the steps' occupancy

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

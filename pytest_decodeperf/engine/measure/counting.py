"""Blocking device reads per decode step, counted in one untimed generation of a variant, and their report.

Deterministic on every device: the reads are counted by op (``syncs.py``), not timed. The generation is run
through the seam like any other (``decode/generation.py``) with the counter among its observers: the decode loop
marks its steps and declares its stop check; generate() and a decoder of yours are observed through forward
hooks, generate()'s stop check counting as hidden, a decoder's as its ``stop_reads`` allow. A sharded model's
collectives are counted in the same generation (``collectives.py``).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from ..decode.generation import Generation
from ..decode.hidden_syncs import no_padding_check
from ..decode.observe import Observer, observers
from .syncs import SyncCounter, SyncObserver

if TYPE_CHECKING:
    from .collectives import CollectiveCounter


def count_syncs(
    device: torch.device,
    model: PreTrainedModel,
    generation: Generation,
    run: Callable[[Observer], object],
    budget: int | None,
    collectives: CollectiveCounter | None = None,
) -> SyncReport:
    """The reads of one generation: ``run(observer)`` runs ``generation`` once with ``observer`` watching.

    ``budget``: hidden reads allowed per decode step (None: the generation's own default, 0 for the decode loop
    and your decoders, not gated for generate()'s modes).
    """
    counter = SyncCounter(device)
    watch = observers(SyncObserver(counter, generation.stop_reads), collectives)
    # not inference_mode: a dispatch mode sees no op inside it (torch 2.13)
    with torch.no_grad(), no_padding_check(model), collectives or contextlib.nullcontext(), counter:
        run(watch)
    return report(counter, generation.sync_budget if budget is None else budget)


@dataclass(frozen=True)
class SyncReport:
    """Blocking reads of one generation per decode step (prefill, step 0, is not a decode step).

    ``hidden``: reads nobody declared (a measurement bug unless budgeted); ``declared``: the stop
    policy's own flag read. ``outside``: reads before the first step or after the loop.
    """

    decode_steps: int
    hidden_per_step: float  # mean over decode steps
    max_hidden: int  # the most in one decode step
    declared_per_step: float
    outside: int
    sites: tuple[str, ...]  # "file:line op xN" of the hidden reads in decode steps
    budget: int | None  # hidden reads allowed per decode step; None: not gated

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.max_hidden > self.budget

    def fields(self) -> dict[str, Any]:
        """The record's sync fields (``records.ResultRecord``)."""
        return {
            "syncs_per_step": self.hidden_per_step,
            "max_syncs_per_step": self.max_hidden,
            "flag_reads_per_step": self.declared_per_step,
            "syncs_outside_steps": self.outside,
            "sync_budget": self.budget,
            "sync_sites": list(self.sites),
        }

    @staticmethod
    def absent() -> dict[str, Any]:
        """The sync fields of a generation not counted (under torch.compile)."""
        return {**dict.fromkeys(SYNC_FIELDS), "sync_sites": []}

    def message(self, label: str) -> str:
        """The one line an item fails with: how many, where, and how to declare them."""
        return (
            f"{label}: {self.max_hidden} hidden blocking device read(s) in a decode step, budget "
            f"{self.budget} (the marker's max_syncs_per_step); each stalls the GPU every step: " + ", ".join(self.sites)
        )


def report(counter: SyncCounter, budget: int | None) -> SyncReport:
    """The counter's decode steps (1..last) summed up against ``budget``."""
    counts = counter.per_step()[1:]
    n = len(counts)
    sites: collections.Counter[str] = collections.Counter()
    for step in range(1, n + 1):
        sites.update(counter.sites(step))
    return SyncReport(
        decode_steps=n,
        hidden_per_step=sum(c.hidden for c in counts) / n if n else 0.0,
        max_hidden=max((c.hidden for c in counts), default=0),
        declared_per_step=sum(c.declared for c in counts) / n if n else 0.0,
        outside=sum(1 for e in counter.events if e.step is None),
        sites=tuple(f"{site} x{count}" for site, count in sorted(sites.items())),
        budget=budget,
    )


SYNC_FIELDS = ("syncs_per_step", "max_syncs_per_step", "flag_reads_per_step", "syncs_outside_steps", "sync_budget")

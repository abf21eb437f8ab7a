"""Blocking device reads per decode step, counted in one untimed generation of a variant.

Deterministic on every device: the reads are counted by op (``syncs.py``), not timed. The generation is run
through the seam like any other (``decode/generation.py``) with the counter among its observers: the decode loop
marks its steps and declares its stop check; generate() and a decoder of yours are observed through forward
hooks, generate()'s stop check counting as hidden, a decoder's as its ``stop_reads`` allow. A sharded model's
collectives are counted in the same generation (``collectives.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from ..decode.generation import Generation
from ..decode.hidden_syncs import no_padding_check
from ..decode.observe import Observer, observers
from .syncs import SyncCounter, SyncObserver, SyncReport, report

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

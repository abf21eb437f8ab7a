"""Blocking device reads per decode step, counted in one untimed generation of a variant.

Deterministic on every device: the reads are counted by op (``syncs.py``), not timed. The decode
loop marks its own steps; generate()'s steps are marked by a forward pre-hook, and its stop check
counts as hidden there. A sharded model's collectives are counted in the same generation
(``collectives.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel

from ..decode.hf_generate import hf_generate
from ..decode.hidden_syncs import no_padding_check
from ..spec.variants import Variant
from ..spec.workload import Workload
from .syncs import SyncCounter, SyncReport, report

if TYPE_CHECKING:
    from .collectives import CollectiveCounter


def count_syncs(
    device: torch.device,
    model: PreTrainedModel,
    variant: Variant,
    workload: Workload,
    budget: int | None,
    loop: Callable[[SyncCounter], None],
    collectives: CollectiveCounter | None = None,
) -> SyncReport | None:
    """The reads of one generation of ``variant`` (None under torch.compile: not counted there).

    ``loop(counter)`` runs the decode loop's generation with the counter marking its steps; ``budget``:
    hidden reads allowed per decode step (None: 0 for the decode loop's modes, not gated for generate()'s).
    """
    if variant.compile:
        return None
    counter = SyncCounter(device)
    watch = collectives.watching(model) if collectives is not None else contextlib.nullcontext()
    # not inference_mode: a dispatch mode sees no op inside it (torch 2.13)
    with torch.no_grad(), no_padding_check(model), watch:
        if variant.is_hf:
            calls = 0

            def mark(_module: torch.nn.Module, _args: Any) -> None:
                nonlocal calls
                counter.step(calls)
                calls += 1

            handle = model.register_forward_pre_hook(mark)
            try:
                with counter:
                    hf_generate(model, workload, variant.cache, variant.stream == "hf-deferred")
            finally:
                handle.remove()
        else:
            with counter:
                loop(counter)
    if budget is None and not variant.is_hf:
        budget = 0  # the decode loop's own modes: no read outside the stop policy's declared one
    return report(counter, budget)

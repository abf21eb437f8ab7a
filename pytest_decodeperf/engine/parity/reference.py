"""The independent reference every variant is held to: transformers' own generate(), greedy.

Parity against the engine's own baseline alone cannot see a model the loop drives wrongly (a state-space model
fed a cache it ignores gives wrong tokens in every stream mode alike). So every variant, baseline included, is
compared with generate() on the same prompts with the workload's stops, the model's own EOS cleared (generate()
falls back to it otherwise). The workload's stops are chosen from the same reference run without stops
(``spec/workload.py``): one function makes both, so the two can never disagree on which comes first.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import PreTrainedModel

from ..decode.caches import CacheSlot, get_cache
from ..decode.generation import GenerateGeneration, LoopGeneration
from ..decode.request import Request
from ..decode.stream_modes import get_stop_policy

GENERATE = "transformers generate()"
LOOP = "the decode loop without a cache (generate() cannot run it)"


def greedy_reference(model: PreTrainedModel, request: Request, stops: bool = True) -> tuple[torch.Tensor, str]:
    """Greedy tokens [B, N] of ``request`` on the host, and what made them.

    transformers' generate() with a dynamic cache; for a model it cannot run (it raises), the decode loop
    without a cache. ``stops=False``: no stop at all, every row runs ``max_new_tokens``.
    """
    if not stops:
        request = replace(request, eos_ids=request.eos_ids[:0])
    with torch.inference_mode():
        try:
            out = GenerateGeneration("hf-generate", "dynamic")(model, request, None)
            return out.generated.cpu(), GENERATE
        except (TypeError, ValueError, AttributeError, NotImplementedError):
            pass
        slot = CacheSlot(get_cache("none"), model, request.batch_size, request.prompt_len + request.max_new_tokens)
        out = LoopGeneration(get_stop_policy("baseline"))(model, request, slot)
        return out.generated.cpu(), LOOP


ALONE = "transformers generate() for each request alone"


def alone_reference(model: PreTrainedModel, request: Request) -> tuple[torch.Tensor, str]:
    """Each row's greedy tokens generated alone (its padding stripped), padded after its stop to one width: what a
    server owes every request whatever else it batched it with."""
    prompts, mask = request.prompts, request.attention_mask
    rows: list[torch.Tensor] = []
    for r in range(request.batch_size):
        row = prompts[r] if mask is None else prompts[r][mask[r].bool()]
        alone = Request(row[None], request.eos_ids, request.pad_id, request.max_new_tokens)
        rows.append(greedy_reference(model, alone)[0][0])
    width = max(int(row.shape[0]) for row in rows)
    out = torch.full((len(rows), width), request.pad_id, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, : row.shape[0]] = row
    return out, ALONE

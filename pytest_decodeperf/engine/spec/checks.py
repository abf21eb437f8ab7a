"""What refuses a variant before it is measured, or fails it after: each one line naming the fix.

A model in another dtype or attention kernel than its variant's (its numbers would be filed under the wrong one); a
model the decode loop cannot drive, or one that ignores the cache it is given (generate() would agree
with its wrong tokens); a compiled variant whose rounds ran eager (dynamo's recompile limit, or no
graph at all): a figure under a label it does not deserve is worse than no figure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import torch
from transformers import PreTrainedModel

from ...errors import DecodePerfError
from ..decode.refusals import loop_refusal
from .models import DTYPES, actual_attn
from .variants import Variant


def weights_dtype(model: torch.nn.Module) -> str:
    """The dtype most of the model's floating weights are in (a few kept in float32 do not count)."""
    counts: Counter[torch.dtype] = Counter()
    for param in model.parameters():
        if param.is_floating_point():
            counts[param.dtype] += param.numel()
    return str(counts.most_common(1)[0][0]).removeprefix("torch.") if counts else "float32"


def check_dtype(model: torch.nn.Module, variant: Variant) -> None:
    """A model in another dtype than its variant's would file its numbers under the wrong one: refused."""
    actual = weights_dtype(model)
    if actual != variant.dtype:
        hint = f" (or set dtype={actual!r})" if actual in DTYPES else ""
        raise DecodePerfError(
            f"{variant.id}: the model's weights are {actual}, but the variant says {variant.dtype}: its numbers "
            f"would be filed under the wrong dtype; build the model in decode_variant.dtype{hint}"
        )


def check_attn(model: torch.nn.Module, variant: Variant) -> None:
    """A model running another attention kernel than its variant names would file its numbers under the wrong
    one (a ``decode_model`` of yours that ignores ``decode_variant.attn``): refused. ``attn=None`` takes any."""
    actual = actual_attn(model)
    if variant.attn is not None and actual != variant.attn:
        raise DecodePerfError(
            f"{variant.id}: the model runs attention with {actual!r}, but the variant says attn={variant.attn!r}: its "
            "numbers would be filed under the wrong kernel; build the model with "
            "attn_implementation=decode_variant.attn (or call model.set_attn_implementation(decode_variant.attn))"
        )


def check_drivable(model: PreTrainedModel, variant: Variant, cache_refusal: Callable[[], str | None]) -> None:
    """The decode loop must be able to drive ``model`` (generate()'s modes may run what it cannot), and a
    cached variant needs a model that uses its cache (``cache_refusal()``: why it does not, or None; a probe
    that runs the model, so asked only once the loop can drive it)."""
    refusal = loop_refusal(model)
    if refusal is not None and (not variant.is_hf or getattr(model.config, "is_encoder_decoder", False)):
        hint = "" if variant.is_hf else "; its generate() stream modes (hf-generate) may still run it"
        raise DecodePerfError(f"{variant.id}: {refusal}{hint}")
    if variant.cache != "none" and not variant.is_hf and (why := cache_refusal()) is not None:
        raise DecodePerfError(f"{variant.id}: {why}; cache=none still runs it")


def check_compiled(
    variant: Variant, compile_stats: Mapping[str, int], counters: Mapping[str, int], graphs_at_compile: int | None
) -> None:
    """A compiled variant whose timed rounds ran (partly) eager fails: dynamo hit its recompile limit while
    measuring (``compile_stats``: the counters' change over the rounds), or no graph was made since the model
    was compiled (``graphs_at_compile``: dynamo's graph count then; ``counters``: now)."""
    if compile_stats.get("recompile_limit_hits", 0) > 0:
        raise DecodePerfError(
            f"{variant.id}: torch.compile hit dynamo's recompile limit while measuring: from there on the "
            "frame ran eager, so this would be a partly eager figure under a compiled label (raise "
            "torch._dynamo.config.recompile_limit, or see why it recompiles with TORCH_LOGS=recompiles)"
        )
    if (
        not variant.is_hf
        and graphs_at_compile is not None
        and counters.get("unique_graphs", 0) - graphs_at_compile <= 0
    ):
        raise DecodePerfError(
            f"{variant.id}: torch.compile produced no graph at all: the model ran eager, so this "
            "would be an eager figure under a compiled label (dynamo's recompile limit, or a graph break "
            "on every frame: run with TORCH_LOGS=recompiles,graph_breaks)"
        )

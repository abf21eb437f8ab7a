"""transformers' own generate() as a variant, for parity and speed against the engine's loop.

``hf-generate`` runs generate() as shipped (its blocking ``StopCheck`` on CUDA). ``hf-deferred``
forces its ``DeferredStopCheck`` on: upstream enables it on mps only ("if we observe perf gains"
for cuda); this mode is how that gain is measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation import utils as gen_utils

from ...errors import DecodePerfError
from ..parity.judge import model_eos_cleared
from ..spec.workload import Workload
from .loop import DecodeOutput

# cache type -> generate() arguments
_CACHE_ARGS: dict[str, dict[str, Any]] = {
    "none": {"use_cache": False},
    "dynamic": {"use_cache": True, "cache_implementation": "dynamic"},
    "static": {"use_cache": True, "cache_implementation": "static"},
}


@contextlib.contextmanager
def deferred_stop_check_forced() -> Iterator[None]:
    """Make generate() pick DeferredStopCheck on any device (undone on exit)."""
    deferred = getattr(gen_utils, "DeferredStopCheck", None)
    if deferred is None:
        import transformers

        raise DecodePerfError(
            f"transformers {transformers.__version__} has no DeferredStopCheck (added in 5.2x); "
            "'hf-deferred' needs a newer transformers"
        )
    original = deferred.__dict__["is_supported"]

    def always(device: torch.device, cache: Any, cache_is_returned: bool, is_assistant: bool) -> bool:
        return not is_assistant and (cache is None or cache.is_croppable or not cache_is_returned)

    deferred.is_supported = staticmethod(always)
    try:
        yield
    finally:
        deferred.is_supported = original


def _mask(workload: Workload) -> torch.Tensor:
    """The workload's padding mask, or all ones (pad == eos == bos for GPT-2: generate() would guess)."""
    return workload.attention_mask if workload.attention_mask is not None else torch.ones_like(workload.prompts)


def hf_generate(
    model: PreTrainedModel,
    workload: Workload,
    cache: str,
    deferred: bool = False,
    compile: bool = False,
    on_prefill: Callable[[], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> DecodeOutput:
    """Greedy generate() on the workload's prompts; steps are counted (and marked) with a forward hook."""
    if cache not in _CACHE_ARGS:
        raise DecodePerfError(f"cache type {cache!r} has no generate() equivalent; use one of {sorted(_CACHE_ARGS)}")
    eos = workload.eos_ids.tolist()
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=workload.max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos if eos else None,
        pad_token_id=workload.pad_id,
        disable_compile=not compile,
        **_CACHE_ARGS[cache],
    )
    calls = 0

    def count(_module: torch.nn.Module, _args: Any, _out: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1 and on_prefill is not None:
            on_prefill()
        elif calls > 1 and on_step is not None:
            on_step()

    prompts = workload.prompts
    handle = model.register_forward_hook(count)
    try:
        # The workload's stops are the only ones: generate() would fall back to the model's own EOS.
        with deferred_stop_check_forced() if deferred else contextlib.nullcontext(), model_eos_cleared(model):
            sequences = cast(Any, model).generate(prompts, attention_mask=_mask(workload), generation_config=config)
    finally:
        handle.remove()
    kept = int(sequences.shape[1]) - int(prompts.shape[1])
    return DecodeOutput(
        tokens=sequences,
        prompt_len=int(prompts.shape[1]),
        steps=calls,
        extra_steps=calls - kept,
        host_reads=calls if not deferred else max(calls - 1, 0),
        note="transformers generate()" + (" with DeferredStopCheck forced on" if deferred else ""),
    )

"""transformers' own generate() as a variant, for parity and speed against the engine's loop.

``hf-generate`` runs generate() as shipped (its blocking ``StopCheck`` on CUDA). ``hf-deferred``
forces its ``DeferredStopCheck`` on: upstream enables it on mps only ("if we observe perf gains"
for cuda); this mode is how that gain is measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation import utils as gen_utils

from ...errors import DecodePerfError
from .observe import NULL_OBSERVER, ForwardSteps, Observer
from .refusals import model_eos_cleared
from .request import DecodeOutput, Request, Speculation

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


def _mask(request: Request) -> torch.Tensor:
    """The request's padding mask, or all ones (pad == eos == bos for GPT-2: generate() would guess)."""
    return request.attention_mask if request.attention_mask is not None else torch.ones_like(request.prompts)


def generation_config(request: Request, cache: str, compile: bool = False, **extra: Any) -> GenerationConfig:
    """Greedy, the request's length and stops (none: exactly its length), ``cache``'s implementation."""
    if cache not in _CACHE_ARGS:
        raise DecodePerfError(f"cache type {cache!r} has no generate() equivalent; use one of {sorted(_CACHE_ARGS)}")
    eos = list(request.host_eos_ids)  # read once per request: this runs inside the timed round
    return GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=request.max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos if eos else None,
        pad_token_id=request.pad_id,
        disable_compile=not compile,
        **_CACHE_ARGS[cache],
        **extra,
    )


def hf_generate(
    model: PreTrainedModel,
    request: Request,
    cache: str,
    deferred: bool = False,
    compile: bool = False,
    observer: Observer = NULL_OBSERVER,
    **generate_kwargs: Any,
) -> DecodeOutput:
    """Greedy generate() on the request's prompts; each forward of the model is a step (``ForwardSteps``), which
    ``observer`` hears. ``generate_kwargs`` go to generate() (a draft model, prompt lookup)."""
    lookup = generate_kwargs.pop("prompt_lookup_num_tokens", None)
    config = generation_config(
        request, cache, compile, **({} if lookup is None else {"prompt_lookup_num_tokens": lookup})
    )
    prompts = request.prompts
    steps = ForwardSteps(model, observer)
    watch = SpeculationWatch(model, generate_kwargs.get("assistant_model"), steps)
    speculative = "assistant_model" in generate_kwargs or lookup is not None
    # The request's stops are the only ones: generate() would fall back to the model's own EOS.
    with (
        steps,
        watch if speculative else contextlib.nullcontext(),
        deferred_stop_check_forced() if deferred else contextlib.nullcontext(),
        model_eos_cleared(model),
    ):
        sequences = cast(Any, model).generate(
            prompts, attention_mask=_mask(request), generation_config=config, **generate_kwargs
        )
    calls = steps.forwards
    kept = int(sequences.shape[1]) - int(prompts.shape[1])
    return DecodeOutput(
        tokens=sequences,
        prompt_len=int(prompts.shape[1]),
        steps=calls,
        extra_steps=max(calls - kept, 0),
        host_reads=calls if not deferred else max(calls - 1, 0),
        note="transformers generate()" + (" with DeferredStopCheck forced on" if deferred else ""),
        speculation=watch.result(calls) if speculative else None,
    )


class SpeculationWatch:
    """Counts what generate()'s speculative decoding proposes and keeps, where it decides it.

    generate() asks its candidate generator for proposals (``get_candidates``) and tells it how many the model
    kept after verifying them (``update_candidate_strategy(..., num_matches)``, transformers 5.x): both are
    wrapped on the generator made for this call (``_get_candidate_generator``, shadowed on this model instance
    only). The draft model's forwards are counted by a hook. Nothing is read on the device that generate() does
    not read itself.
    """

    def __init__(self, model: torch.nn.Module, draft: torch.nn.Module | None, steps: ForwardSteps):
        self.model = model
        self.draft = draft
        self.steps = steps  # the model's steps: a draft that is the model itself must not add to them
        self.proposed = 0
        self.accepted = 0
        self.draft_steps = 0
        self._drafting = False
        self._handle: Any = None

    def _wrap(self, *args: Any, **kwargs: Any) -> Any:
        generator = type(self.model)._get_candidate_generator(self.model, *args, **kwargs)  # type: ignore[attr-defined]
        get, update = generator.get_candidates, generator.update_candidate_strategy

        def get_candidates(input_ids: torch.Tensor, **kw: Any) -> Any:
            self._drafting = self.steps.paused = True  # what runs now drafts (with the model itself, for "self")
            try:
                candidates, logits = get(input_ids, **kw)
            finally:
                self._drafting = self.steps.paused = False
            self.proposed += int(candidates.shape[1]) - int(input_ids.shape[1])
            return candidates, logits

        def update_candidate_strategy(input_ids: torch.Tensor, scores: Any, num_matches: Any) -> Any:
            self.accepted += int(num_matches)  # a host int there already (valid_tokens.shape[1] - 1)
            return update(input_ids, scores, num_matches)

        generator.get_candidates, generator.update_candidate_strategy = get_candidates, update_candidate_strategy
        return generator

    def _count_draft(self, _module: torch.nn.Module, _args: Any, _out: Any) -> None:
        if self._drafting:  # the draft may be the model itself: only its forwards while drafting are draft steps
            self.draft_steps += 1

    def __enter__(self) -> SpeculationWatch:
        object.__setattr__(self.model, "_get_candidate_generator", self._wrap)
        if self.draft is not None:
            self._handle = self.draft.register_forward_hook(self._count_draft)
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.__dict__.pop("_get_candidate_generator", None)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def result(self, verify_steps: int) -> Speculation:
        return Speculation(verify_steps, self.proposed, self.accepted, self.draft_steps)

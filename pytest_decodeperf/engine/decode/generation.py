"""The generation seam: the plugin's loop, transformers' generate() and your decoders, driven one way.

A ``Generation`` turns a request into tokens: ``gen(model, request, slot, observer, runtime) -> DecodeOutput``.
Whatever runs it (the timed rounds, the sync count, the profiler's window, the cache and router probe, the
parity reference, tensor-parallel ranks) calls it that way and watches it through ``observer``, so no probe
calls a model differently from what is measured. Three kinds:

* ``LoopGeneration``: the plugin's decode loop (``loop.py``) with a stop policy; it marks its own steps and
  declares its stop check.
* ``GenerateGeneration``: transformers' generate() with the variant's cache implementation (``hf_generate.py``).
* ``DecoderGeneration``: a decoder of your own (``custom.py``), called once with its inputs and the slot's cache.

The last two are observed through forward hooks (``observe.ForwardSteps``): every forward of the model is a
step, with no help from the code that makes it. ``slot``: the variant's cache (kept across rounds when
preallocated); generate() builds its own and takes None.
"""

from __future__ import annotations

import os
import traceback
import weakref
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel

from ...errors import DecodePerfError
from ..device.runtime import DeviceRuntime, runtime_for
from .caches import CacheSlot
from .custom import Decoder, DecoderInputs, get_decoder, short_path
from .forward import ForwardCall
from .hf_generate import hf_generate
from .loop import generate
from .observe import NULL_OBSERVER, ForwardSteps, Observer
from .request import DecodeOutput, Request, kept_steps
from .serve import ServeSession, serve
from .stream_modes import HF_MODES, StopPolicy, get_stop_policy

__all__ = [
    "Call",
    "DecoderError",
    "DecoderGeneration",
    "GenerateGeneration",
    "Generation",
    "LoopGeneration",
    "ServeGeneration",
    "generation_for",
]


class Generation:
    """One way of turning a request into greedy tokens (see the module docstring)."""

    name: str = ""
    uses_slot: bool = True  # the runner makes the variant's cache slot for it (generate() makes its own)
    # How the sync counter tells its stop check: None, the generation declares it itself (the loop) or not at all
    # (generate()); a number, that many one-element bool reads a step outside the forward (your decoder).
    stop_reads: int | None = None
    sync_budget: int | None = 0  # hidden reads allowed per decode step when the user sets none (None: not gated)
    counts_syncs: bool = True  # False: its forwards run where the sync counter cannot see them (another thread)

    def __call__(
        self,
        model: PreTrainedModel,
        request: Request,
        slot: CacheSlot | None,
        observer: Observer = NULL_OBSERVER,
        runtime: DeviceRuntime | None = None,
    ) -> DecodeOutput:
        """Generate ``request`` on ``model`` with ``slot``'s cache (None: the generation makes its own), watched by
        ``observer``, through ``runtime`` (the device's own when None; tests pass the CUDA simulator)."""
        if self.uses_slot and slot is None:
            raise DecodePerfError(f"stream mode {self.name!r} needs the variant's cache slot")
        device = request.prompts.device
        return self.run(Call(model, request, slot, observer, runtime if runtime is not None else runtime_for(device)))

    def run(self, call: Call) -> DecodeOutput:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what this generation keeps between calls (a running server); nothing for most."""


class Call(NamedTuple):
    """One call of a generation (``Generation.__call__``'s arguments, the runtime resolved)."""

    model: PreTrainedModel
    request: Request
    slot: CacheSlot | None
    observer: Observer
    runtime: DeviceRuntime


class LoopGeneration(Generation):
    """The plugin's decode loop with ``policy``'s stop check; ``ready_mask``: the model takes a ready 4-D mask."""

    def __init__(self, policy: StopPolicy, ready_mask: bool = False):
        self.policy = policy
        self.name = policy.name
        self.ready_mask = ready_mask

    def run(self, call: Call) -> DecodeOutput:
        assert call.slot is not None
        return generate(call.model, call.request, call.slot, self.policy, call.observer, call.runtime, self.ready_mask)


class GenerateGeneration(Generation):
    """transformers' generate() with the cache implementation ``cache`` (``hf-deferred``: its deferred stop check)."""

    uses_slot = False
    sync_budget = None  # generate()'s own reads are reported, gated only when the user sets a budget

    def __init__(self, name: str, cache: str, deferred: bool = False, compile: bool = False, **kwargs: Any):
        self.name = name
        self.cache = cache
        self.deferred = deferred
        self.compile = compile
        self.kwargs = kwargs

    def run(self, call: Call) -> DecodeOutput:
        return hf_generate(
            call.model, call.request, self.cache, self.deferred, self.compile, call.observer, **self.kwargs
        )


class ServeGeneration(Generation):
    """Continuous batching (``serve.py``): the request's rows as requests, ``concurrency`` of them at once."""

    uses_slot = False
    sync_budget = None
    counts_syncs = False

    def __init__(self, concurrency: int):
        self.name = "hf-serve"
        self.concurrency = concurrency
        self._sessions: list[ServeSession] = []  # the running server, made at the first call (a warmup round)
        self._finalizer = weakref.finalize(self, _close_all, self._sessions)

    def run(self, call: Call) -> DecodeOutput:
        session = self._sessions[0] if self._sessions else None
        if session is None or session.model is not call.model or session.request is not call.request:
            _close_all(self._sessions)
            self._sessions.append(ServeSession(call.model, call.request, self.concurrency))
        with ForwardSteps(call.model, call.observer) as steps:
            return serve(self._sessions[0], steps)

    def close(self) -> None:
        _close_all(self._sessions)


def _close_all(sessions: list[ServeSession]) -> None:
    while sessions:
        sessions.pop().close()


class DecoderError(DecodePerfError):
    """A decoder of the user's raised, or returned something that is not tokens: its item fails in one line."""


class DecoderGeneration(Generation):
    """A decoder of your own, called once per generation; its steps are the model's forwards."""

    def __init__(self, decoder: Decoder, ready_mask: bool = False):
        self.decoder = decoder
        self.name = decoder.name
        self.stop_reads = decoder.stop_reads
        self.ready_mask = ready_mask

    def inputs(
        self, model: PreTrainedModel, request: Request, slot: CacheSlot, runtime: DeviceRuntime
    ) -> DecoderInputs:
        """What the decoder is given: the request, the slot's cache (fresh, or the preallocated one reset)."""
        prompts = request.prompts
        batch, prompt_len = prompts.shape
        total = prompt_len + request.max_new_tokens
        slot.check_capacity(total)
        strategy = slot.strategy
        kv_total = slot.max_len if strategy.preallocated else None
        full = strategy.feeds_full_sequence  # no cache: each forward re-runs the sequence, with the loop's ready mask
        call = ForwardCall(model, batch, total, prompts.device, request.attention_mask, kv_total, self.ready_mask, full)
        mask = request.attention_mask if request.attention_mask is not None else torch.ones_like(prompts)
        return DecoderInputs(
            input_ids=prompts,
            attention_mask=mask,
            cache=slot.fresh(),
            max_new_tokens=request.max_new_tokens,
            eos_token_ids=request.eos_ids,
            pad_token_id=request.pad_id,
            position_ids=call.positions,
            cache_keyword=call.keyword,
            runtime=runtime,
            call=call,
        )

    def run(self, call: Call) -> DecodeOutput:
        model, request = call.model, call.request
        assert call.slot is not None
        inputs = self.inputs(model, request, call.slot, call.runtime)
        with ForwardSteps(model, call.observer) as steps:
            try:
                returned = self.decoder.fn(model, inputs)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                raise DecoderError(f"decoder {self.name!r} raised {_one_line(exc)} ({self._line(exc)})") from None
        generated = self._tokens(returned, request)
        if steps.forwards == 0:
            raise DecoderError(
                f"decoder {self.name!r} ({self.decoder.where}) never called the model's forward: its steps cannot be "
                "timed (a compiled or wrapped copy of the model? call the model it is given)"
            )
        kept = int(generated.shape[1])
        tokens = torch.cat([request.prompts, generated.to(request.prompts.device)], dim=1)
        return DecodeOutput(
            tokens=tokens,
            prompt_len=int(request.prompts.shape[1]),
            steps=steps.forwards,
            extra_steps=max(steps.forwards - kept, 0),
            host_reads=0,  # counted by op in the sync-counting generation (its flag reads per step)
            note=f"decoder {self.name!r} ({self.decoder.where})",
        )

    def _line(self, exc: BaseException) -> str:
        """The decoder's file and line where it raised (else the innermost frame's)."""
        frames = traceback.extract_tb(exc.__traceback__)
        mine = [f for f in frames if self.decoder.filename and os.path.abspath(f.filename) == self.decoder.filename]
        if not (mine or frames):
            return self.decoder.where
        frame = (mine or frames)[-1]
        name = frame.filename if frame.filename.startswith("<") else short_path(frame.filename)
        return f"{name}:{frame.lineno}"

    def _tokens(self, returned: Any, request: Request) -> torch.Tensor:
        """The returned tokens [B, n] checked, and trimmed of columns after every row's stop that hold only pads."""
        name, where = self.name, self.decoder.where
        batch, limit = request.batch_size, request.max_new_tokens
        if not isinstance(returned, torch.Tensor):
            raise DecoderError(
                f"decoder {name!r} ({where}) returned {type(returned).__name__}, not a tensor of new tokens "
                f"[batch, <= max_new_tokens]"
            )
        if returned.dtype.is_floating_point or returned.dtype.is_complex or returned.dtype == torch.bool:
            raise DecoderError(f"decoder {name!r} ({where}) returned {returned.dtype} tokens; token ids are integers")
        if returned.dim() != 2 or int(returned.shape[0]) != batch:
            raise DecoderError(
                f"decoder {name!r} ({where}) returned shape {tuple(returned.shape)}; new tokens are [batch={batch}, "
                f"<= {limit}] (the prompt left out)"
            )
        if int(returned.shape[1]) > limit:
            raise DecoderError(
                f"decoder {name!r} ({where}) returned {int(returned.shape[1])} new tokens a row, more than "
                f"max_new_tokens={limit}"
            )
        generated = returned.long()
        eos = request.eos_ids.to(generated.device)
        kept = kept_steps(generated, eos)
        if kept < int(generated.shape[1]) and bool((generated[:, kept:] == request.pad_id).all()):
            generated = generated[:, :kept]  # a decoder that ran every row to the end: the run-on is padding
        return generated


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def generation_for(
    stream: str,
    cache: str,
    compile: bool | str = False,
    ready_mask: bool = False,
    draft: PreTrainedModel | None = None,
    lookup_tokens: int = 4,
    concurrency: int = 1,
) -> Generation:
    """The generation a stream mode names: a stop policy of the loop, a generate() mode, or a decoder of yours.

    ``draft``: the draft model of ``hf-assisted``; ``lookup_tokens``: the n-gram length ``hf-prompt-lookup``
    proposes at most; ``concurrency``: how many requests ``hf-serve`` runs at once."""
    if stream == "hf-serve":
        return ServeGeneration(concurrency)
    if stream == "hf-prompt-lookup":
        return GenerateGeneration(stream, cache, compile=bool(compile), prompt_lookup_num_tokens=lookup_tokens)
    if stream == "hf-assisted":
        if draft is None:
            raise DecodePerfError("stream mode 'hf-assisted' needs a draft model (draft= in the marker, or a fixture)")
        return GenerateGeneration(stream, cache, compile=bool(compile), assistant_model=draft)
    if stream in HF_MODES:
        return GenerateGeneration(stream, cache, deferred=stream == "hf-deferred", compile=bool(compile))
    decoder = get_decoder(stream)
    if decoder is not None:
        return DecoderGeneration(decoder, ready_mask)
    return LoopGeneration(get_stop_policy(stream), ready_mask)

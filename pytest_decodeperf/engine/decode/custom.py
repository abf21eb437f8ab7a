"""Decoders of your own: your generation code as a stream mode, measured and held to parity like the built-ins.

In ``conftest.py`` (or any module pytest loads before collection, or ``decodeperf run --decoders``)::

    from pytest_decodeperf import decoder

    @decoder("my-loop")
    def my_loop(model, inputs):
        ...                      # your own prefill, decode steps and stop check
        return new_tokens        # LongTensor [batch, <= inputs.max_new_tokens]

``inputs`` (``DecoderInputs``) carries the prompts, the variant's cache (built as the plugin's loop gets it, None
for ``cache="none"``), the stops and the pad. Rows after their stop must hold the pad id. The decoder is then a
stream mode like ``baseline``: ``stream=("baseline", "my-loop")`` in the marker, ``--decodeperf-streams=my-loop``.

It is measured without its help (``generation.py``): every forward of the model inside the call is a step,
timed by forward hooks. A blocking device read in your code counts against the sync budget at its file and
line, except the stop check: up to ``stop_reads`` reads a step of a one-element bool tensor outside the
model's forward (``if finished.all():``) are the declared stop check, as the plugin's baseline mode's one read.

This module imports nothing heavy: a conftest importing ``decoder`` keeps pytest's start light.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import DecodePerfError

if TYPE_CHECKING:
    import torch
    from transformers import Cache

    from ..device.runtime import DeviceRuntime
    from .forward import ForwardCall

DecoderFn = Callable[[Any, "DecoderInputs"], Any]
F = TypeVar("F", bound=Callable[..., Any])
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Decoder:
    """A registered decoder: its stream-mode name, the function, and how many stop-flag reads a step it makes."""

    name: str
    fn: DecoderFn
    stop_reads: int = 1
    description: str = ""

    @property
    def where(self) -> str:
        """``file:line`` of the function's definition."""
        code = getattr(self.fn, "__code__", None)
        if code is None:
            return getattr(self.fn, "__qualname__", repr(self.fn))
        return f"{short_path(code.co_filename)}:{code.co_firstlineno}"

    @property
    def filename(self) -> str | None:
        code = getattr(self.fn, "__code__", None)
        return os.path.abspath(code.co_filename) if code is not None else None


DECODERS: dict[str, Decoder] = {}


def short_path(path: str) -> str:
    """``path`` relative to here when it is below, else as it is (how a site is named to the user)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def decoder(name: str, *, stop_reads: int = 1, description: str | None = None) -> Callable[[F], F]:
    """Register ``fn(model, inputs) -> new_tokens`` as the stream mode ``name`` (``inputs``: ``DecoderInputs``).

    ``stop_reads``: blocking reads a decode step may make for the stop check (one-element bool tensors read
    outside the model's forward); every other read in a step is hidden and counts against the sync budget.
    Registering a name again replaces the decoder (a conftest imported twice).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise DecodePerfError(
            f"decoder name must be letters, digits and '-', '_', '.', '+' (it goes into test ids), got {name!r}"
        )
    if isinstance(stop_reads, bool) or not isinstance(stop_reads, int) or stop_reads < 0:
        raise DecodePerfError(f"decoder {name!r}: stop_reads must be an integer >= 0, got {stop_reads!r}")

    def register(fn: F) -> F:
        if not callable(fn):
            raise DecodePerfError(f"decoder {name!r} must decorate a function, got {fn!r}")
        text = description if description is not None else (inspect.getdoc(fn) or "").split("\n")[0]
        DECODERS[name] = Decoder(name, fn, stop_reads, text or f"your decoder {getattr(fn, '__qualname__', name)}")
        return fn

    return register


def get_decoder(name: str) -> Decoder | None:
    return DECODERS.get(name)


@dataclass
class DecoderInputs:
    """What a decoder of your own is given: one request, and a cache built as the plugin's loop gets it."""

    input_ids: torch.Tensor  # [B, P] prompts, left padded when their lengths differ
    attention_mask: torch.Tensor  # [B, P], 1 for a real token (all ones when no row is padded)
    # the variant's cache, built as the plugin's loop gets it: a fresh DynamicCache, the preallocated StaticCache
    # reset, or None for cache="none"
    cache: Cache | None
    max_new_tokens: int  # the most new tokens a row may get
    eos_token_ids: torch.Tensor  # [E] stop tokens, on the device (empty: no stop)
    pad_token_id: int  # what a row emits after its stop
    position_ids: torch.Tensor | None  # [B, P + N] each position's id as generate() passes them (None: not taken)
    cache_keyword: str  # the keyword the model's forward takes its cache by ("cache", or "past_key_values")
    # the device seam (streams, events, pinned flags) for a decoder that overlaps steps: through it the CUDA
    # simulator checks your stream order on a CPU
    runtime: DeviceRuntime
    call: ForwardCall = field(repr=False)  # how forward_kwargs builds a forward's keywords (forward.py)

    @property
    def batch_size(self) -> int:
        """Rows: ``input_ids.shape[0]``."""
        return int(self.input_ids.shape[0])

    @property
    def prompt_len(self) -> int:
        """Prompt width, padding included: ``input_ids.shape[1]``."""
        return int(self.input_ids.shape[1])

    def forward_kwargs(self, start: int, end: int) -> dict[str, Any]:
        """The keywords of a forward over positions [start, end), as generate() passes them (the cache included)."""
        return self.call.kwargs(start, end, self.cache)

"""Watching a generation step by step: what the clock, the sync counter, NVTX and the collective counter hook into.

Every generation of the seam (``generation.py``) is observed the same way. The plugin's decode loop calls an
observer itself, at the points only it knows (the stop check); a generation that does not (transformers'
generate(), a user's decoder) is observed through forward hooks on the model (``ForwardSteps``): forward ``i`` is
step ``i``, the prefill step 0, with no help from the code that calls it.

For step ``i`` an observer hears, in order: ``begin_step(i)`` before it is launched, ``launched(i)`` right
after (on the step's stream: it may record an event, never read the device), and ``stop_check()`` around the
host's read of the stop flag, when the generation declares one. ``generation()`` spans the whole generation and
``end()`` follows its last step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

_NULL = contextlib.nullcontext()


class Observer:
    """Watches one generation; every method here does nothing (subclasses take what they need)."""

    def generation(self) -> contextlib.AbstractContextManager[Any]:
        return _NULL

    def begin_step(self, step: int) -> None:
        """Step ``step`` (0: the prefill) is about to be launched."""

    def range(self, name: str, color: str = "blue") -> contextlib.AbstractContextManager[Any]:
        """A named region of the step (NVTX)."""
        return _NULL

    def launched(self, step: int) -> None:
        """Step ``step`` was launched, on its stream; must not read the device."""

    def stop_check(self) -> contextlib.AbstractContextManager[Any]:
        """The region in which the host reads the stop flag (a declared, budgeted blocking read)."""
        return _NULL

    def end(self) -> None:
        """The generation's last step is behind it."""


NULL_OBSERVER = Observer()


class Observers(Observer):
    """Several observers as one, each told everything in the order given."""

    def __init__(self, *parts: Observer):
        self.parts = [p for p in parts if p is not NULL_OBSERVER]

    @contextlib.contextmanager
    def _all(self, method: str, *args: Any) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(getattr(part, method)(*args))
            yield

    def generation(self) -> contextlib.AbstractContextManager[Any]:
        return self._all("generation")

    def begin_step(self, step: int) -> None:
        for part in self.parts:
            part.begin_step(step)

    def range(self, name: str, color: str = "blue") -> contextlib.AbstractContextManager[Any]:
        return self._all("range", name, color)

    def launched(self, step: int) -> None:
        for part in self.parts:
            part.launched(step)

    def stop_check(self) -> contextlib.AbstractContextManager[Any]:
        return self._all("stop_check")

    def end(self) -> None:
        for part in self.parts:
            part.end()


def observers(*parts: Observer | None) -> Observer:
    """One observer for the given ones (None left out): the only one as itself, none as ``NULL_OBSERVER``."""
    kept = [p for p in parts if p is not None and p is not NULL_OBSERVER]
    if not kept:
        return NULL_OBSERVER
    return kept[0] if len(kept) == 1 else Observers(*kept)


class ForwardSteps:
    """Observe a generation through ``model``'s forwards: each forward is a step (the first, the prefill).

    ``with ForwardSteps(model, observer) as steps: ...`` registers a pre-hook (``begin_step``, and the step's
    ``step i`` range opened) and a post-hook (the range closed, ``launched``) on ``model``, removed on exit,
    after which the observer hears ``end()``. ``forwards`` counts them; ``in_forward`` says whether the code
    running now is inside the model's forward (the sync counter tells the model's reads from its caller's).
    """

    def __init__(self, model: torch.nn.Module, observer: Observer = NULL_OBSERVER):
        self.model = model
        self.observer = observer
        self.forwards = 0
        self.in_forward = False
        self.paused = False  # forwards that are not steps (a draft that is the model itself, while it drafts)
        self._handles: list[Any] = []
        self._ranges: list[contextlib.ExitStack] = []
        self._generation = contextlib.ExitStack()

    def _before(self, _module: torch.nn.Module, _args: Any) -> None:
        if self.paused:
            return
        step = self.forwards
        self.observer.begin_step(step)
        stack = contextlib.ExitStack()
        stack.enter_context(self.observer.range(f"step {step}"))
        self._ranges.append(stack)
        self.in_forward = True

    def _after(self, _module: torch.nn.Module, _args: Any, _out: Any) -> None:
        if self.paused:
            return
        self.in_forward = False
        if self._ranges:
            self._ranges.pop().close()
        self.observer.launched(self.forwards)
        self.forwards += 1

    def __enter__(self) -> ForwardSteps:
        self._generation.enter_context(self.observer.generation())
        self._handles = [
            self.model.register_forward_pre_hook(self._before),
            self.model.register_forward_hook(self._after),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        while self._ranges:  # a forward that raised
            self._ranges.pop().close()
        self.in_forward = False
        self.observer.end()
        self._generation.close()

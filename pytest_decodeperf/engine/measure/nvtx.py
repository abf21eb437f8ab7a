"""NVTX ranges and the nsys capture window, as cheap no-ops when unavailable.

Ranges come from the ``nvtx`` package (``torch.cuda.nvtx`` raises on CPU builds). The capture
window calls ``torch.cuda.profiler.start/stop`` at chosen steps, for
``nsys profile --capture-range=cudaProfilerApi``; it only exists on CUDA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch

from ...errors import DecodePerfError
from ..decode.observe import Observer

try:  # optional: the ranges are no-ops without it
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - nvtx is a declared dependency
    _nvtx = None

_NULL = contextlib.nullcontext()


def nvtx_available() -> bool:
    return _nvtx is not None


class Tracer(Observer):
    """Per-step annotation hooks on a generation (an observer); a disabled tracer costs one attribute read."""

    def __init__(
        self,
        nvtx: bool = False,
        profile_steps: tuple[int, int] | None = None,
        device: torch.device | None = None,
    ):
        self.enabled = nvtx and _nvtx is not None
        self.profile_steps = profile_steps
        self.device = device or torch.device("cpu")
        self.profiling = False
        if profile_steps is not None and self.device.type != "cuda":
            raise DecodePerfError("--decodeperf-profile-steps needs CUDA (cudaProfilerApi); this run is on cpu")

    @property
    def active(self) -> bool:
        """Whether it does anything: NVTX ranges on, or a capture window (a disabled one is left out of a step)."""
        return self.enabled or self.profile_steps is not None

    def without_window(self) -> Tracer:
        """The same NVTX ranges with no capture window: for warmup and timed rounds."""
        if self.profile_steps is None:
            return self
        return Tracer(self.enabled, None, self.device)

    def range(self, name: str, color: str = "blue") -> contextlib.AbstractContextManager[Any]:
        if not self.enabled:
            return _NULL
        assert _nvtx is not None
        return cast("contextlib.AbstractContextManager[Any]", _nvtx.annotate(name, color=color))

    def begin_step(self, step: int) -> None:
        self.on_step(step)

    def on_step(self, step: int) -> None:
        """Open or close the cudaProfilerApi window at its boundary steps."""
        window = self.profile_steps
        if window is None:
            return
        if step == window[0] and not self.profiling:
            torch.cuda.synchronize(self.device)
            torch.cuda.profiler.start()  # type: ignore[no-untyped-call]
            self.profiling = True
        elif step == window[1] and self.profiling:
            torch.cuda.synchronize(self.device)
            torch.cuda.profiler.stop()  # type: ignore[no-untyped-call]
            self.profiling = False

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """Close an open capture window when a generation ends before its stop step."""
        try:
            yield
        finally:
            if self.profiling:
                torch.cuda.synchronize(self.device)
                torch.cuda.profiler.stop()  # type: ignore[no-untyped-call]
                self.profiling = False


NULL_TRACER = Tracer()


def parse_profile_steps(text: str, new_tokens: int | None = None) -> tuple[int, int]:
    """Parse ``START:STOP`` (0 <= START < STOP <= new_tokens) into a tuple."""
    try:
        start_s, stop_s = text.split(":")
        start, stop = int(start_s), int(stop_s)
    except ValueError:
        raise DecodePerfError(f"profile steps must look like START:STOP (e.g. 30:50), got {text!r}") from None
    if not 0 <= start < stop:
        raise DecodePerfError(f"profile steps need 0 <= START < STOP, got {text!r}")
    if new_tokens is not None and stop > new_tokens:
        raise DecodePerfError(f"profile window {text!r} ends after the run's last step ({new_tokens} new tokens)")
    return start, stop

"""A steady process to time in: torch's threads pinned, the garbage collector paused.

torch's thread count changes CPU timings by tens of percent on a shared machine (pinned while measuring, and
recorded); a collector pause inside a timed round would be timed (paused, as timeit does). Every timed path (a
variant's rounds, the A/B's single rounds) goes through these two.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the duration (None: left as they are), then restored."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def collector_paused(collect: int | None = None) -> Iterator[None]:
    """The garbage collector off for the duration (back on after, if it was), after collecting the generations
    up to ``collect`` (None: no collection first)."""
    enabled = gc.isenabled()
    if collect is not None:
        gc.collect(collect)
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

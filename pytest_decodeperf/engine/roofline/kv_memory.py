"""The KV cache's memory against its analytic size: what the device's allocator was really asked for.

``roofline.static_cache_bytes`` says what a static cache of a config takes; ``cache_tensor_bytes``
(its tensors' ``nbytes``) agrees with it by construction on any device. What a user pays on a GPU
is what the cache asks the caching allocator for, so on CUDA each cache layer's lazy
initialisation (where transformers' ``StaticLayer`` makes its keys and values) is wrapped, and the
growth of the allocator's requested bytes across it (``requested_bytes.all.current``, through the
device seam) is summed. It must equal the analytic size, give or take the layer's small tensors (a
length counter, a window size: at most ``SMALL_BYTES_PER_LAYER``). A static cache that asks for
more (a layout the analytic model does not know, a duplicated buffer) shows as a note.

Requested, not allocated, bytes: the allocator rounds a small request up to 512 bytes and a large
one to 2 MiB, and hands out a cached block unsplit when less than 1 MiB would be left over, so
``memory_allocated`` can exceed a correct cache by up to ~1 MiB a tensor. What the rounding costs
is the allocator's, and shows in ``peak_reserved_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SMALL_BYTES_PER_LAYER = 256  # a layer's scalars beside its keys and values (cumulative length, window)


@dataclass(frozen=True)
class KVAllocation:
    """A static cache's requested bytes against its analytic size."""

    allocated: int  # the requested bytes' growth across the layers' first initialisation
    analytic: int
    layers: int  # layers that initialised

    @property
    def slack(self) -> int:
        """What a layer's small tensors can add."""
        return SMALL_BYTES_PER_LAYER * self.layers

    @property
    def matches(self) -> bool:
        return self.analytic <= self.allocated <= self.analytic + self.slack

    def note(self) -> str:
        if self.matches:
            return ""
        return (
            f"static cache: it asked the allocator for {self.allocated:,} bytes, its config says {self.analytic:,} "
            f"(its small tensors allow {self.slack:,} more): the analytic KV size does not fit this model"
        )


@dataclass
class AllocationWatch:
    """Records the growth of the device's requested bytes across each layer's first lazy initialisation.

    ``requested``: the device's requested bytes now (the runtime's ``requested_bytes``). The wrapper is
    an instance attribute of each layer; the class and every other cache are untouched. Only a
    layer's first initialisation counts: one that re-initialises on reset replaces its buffers.
    """

    requested: Callable[[], int]
    deltas: dict[int, int] = field(default_factory=dict)  # layer index -> bytes

    def watch(self, cache: Any) -> AllocationWatch:
        for index, layer in enumerate(getattr(cache, "layers", ())):
            init = getattr(layer, "lazy_initialization", None)
            if callable(init) and not getattr(layer, "is_initialized", False):
                layer.lazy_initialization = self._measured(index, init)
        return self

    def _measured(self, index: int, init: Callable[..., Any]) -> Callable[..., Any]:
        def measured(*args: Any, **kwargs: Any) -> Any:
            before = self.requested()
            out = init(*args, **kwargs)
            self.deltas.setdefault(index, self.requested() - before)
            return out

        return measured

    def result(self, analytic: int) -> KVAllocation | None:
        """The check, once layers have initialised (None before the first generation)."""
        if not self.deltas:
            return None
        return KVAllocation(sum(self.deltas.values()), analytic, len(self.deltas))

"""The KV cache's memory against its analytic size: what the device's allocator really handed it.

``roofline.static_cache_bytes`` says what a static cache of a config takes; ``cache_tensor_bytes``
(its tensors' ``nbytes``) agrees with it by construction on any device. What a user pays on a GPU
is what the caching allocator hands out, so on CUDA each cache layer's lazy initialisation (where
transformers' ``StaticLayer`` makes its keys and values) is wrapped, and the allocator's growth
across it (``torch.cuda.memory_allocated``, through the device seam) is summed. It must equal the
analytic size within the allocator's rounding: every allocation rounds up to 512 bytes, and a
layer makes its keys, its values and at most two small tensors (its length counter, a window).
A static cache that takes more (a layout the analytic model does not know, a duplicated buffer)
shows as a note on the variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ALLOCATOR_BLOCK = 512  # bytes: the CUDA caching allocator's smallest block and its rounding unit
ALLOCATIONS_PER_LAYER = 4  # keys, values, and up to two small tensors (cumulative length, window)


@dataclass(frozen=True)
class KVAllocation:
    """A static cache's allocator bytes against its analytic size."""

    allocated: int  # the allocator's growth across the layers' initialisation
    analytic: int
    layers: int  # layers that allocated

    @property
    def slack(self) -> int:
        """What rounding can add: 512 bytes for each allocation a layer makes, at most."""
        return ALLOCATOR_BLOCK * ALLOCATIONS_PER_LAYER * self.layers

    @property
    def matches(self) -> bool:
        return self.analytic <= self.allocated <= self.analytic + self.slack

    def note(self) -> str:
        if self.matches:
            return ""
        return (
            f"static cache: the allocator handed it {self.allocated:,} bytes, its config says {self.analytic:,} "
            f"(rounding allows up to {self.slack:,} more): the analytic KV size does not fit this model"
        )


@dataclass
class AllocationWatch:
    """Records the allocator's growth across each layer's lazy initialisation of one cache.

    ``allocated``: the device's allocated bytes now (the runtime's ``allocated_bytes``). The wrapper
    is an instance attribute of each layer; the class and every other cache are untouched.
    """

    allocated: Callable[[], int]
    deltas: list[int] = field(default_factory=list)

    def watch(self, cache: Any) -> AllocationWatch:
        for layer in getattr(cache, "layers", ()):
            init = getattr(layer, "lazy_initialization", None)
            if callable(init) and not getattr(layer, "is_initialized", False):
                layer.lazy_initialization = self._measured(init)
        return self

    def _measured(self, init: Callable[..., Any]) -> Callable[..., Any]:
        def measured(*args: Any, **kwargs: Any) -> Any:
            before = self.allocated()
            out = init(*args, **kwargs)
            self.deltas.append(self.allocated() - before)
            return out

        return measured

    def result(self, analytic: int) -> KVAllocation | None:
        """The check, once every layer has initialised (None before the first generation)."""
        if not self.deltas:
            return None
        return KVAllocation(sum(self.deltas), analytic, len(self.deltas))

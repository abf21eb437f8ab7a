"""Count the collectives a sharded model launches per decode step, by op, with their payload bytes.

Counted, not assumed: like ``syncs.py`` counts blocking reads, a ``TorchDispatchMode`` sees every op of one
untimed generation, and the ops of torch.distributed's two namespaces are the collectives: ``c10d``
(``dist.all_reduce`` and friends, what transformers' row-wise layers call on the inference path) and
``_c10d_functional`` (DTensor's redistributions, e.g. the LM head's all-gather). Their waits and autograd
wrappers are not collectives. The generation's observer marks the steps (``decode/observe.py``): step 0 is the prefill,
each later forward one decode step, as in the decode loop and in generate().

The bytes are each collective's payload on one rank: the tensor reduced, broadcast or scattered, and for an
all-gather the gathered result. What the interconnect moves for it depends on the algorithm (a ring all-reduce
sends about twice the payload); the payload is what the roofline adds to a step's bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from ..decode.observe import Observer
from ..device.dispatch import OpWatch

__all__ = ["CollectiveCounter", "CollectiveReport"]

_NAMESPACES = ("c10d", "_c10d_functional")
_NOT_COLLECTIVES = {"wait_tensor", "_wrap_tensor_autograd"}
_KINDS = {
    "all_reduce": ("allreduce_", "allreduce_coalesced_", "all_reduce", "all_reduce_", "all_reduce_coalesced"),
    "all_gather": (
        "allgather_",
        "_allgather_base_",
        "allgather_coalesced_",
        "allgather_into_tensor_coalesced_",
        "all_gather_into_tensor",
        "all_gather_into_tensor_out",
        "all_gather_into_tensor_coalesced",
    ),
    "reduce_scatter": (
        "reduce_scatter_",
        "_reduce_scatter_base_",
        "reduce_scatter_tensor",
        "reduce_scatter_tensor_coalesced",
    ),
    "broadcast": ("broadcast_", "broadcast"),
    "all_to_all": ("alltoall_", "alltoall_base_", "all_to_all_single"),
}
_KIND_OF = {name: kind for kind, names in _KINDS.items() for name in names}


def _bytes(value: Any) -> int:
    return sum(int(t.nbytes) for t in tree_leaves(value) if isinstance(t, torch.Tensor))


@dataclass(frozen=True)
class CollectiveReport:
    """Collectives per decode step of one generation (the prefill, step 0, apart)."""

    decode_steps: int
    per_step: float  # collectives per decode step, every kind
    bytes_per_step: float  # their payload bytes per decode step, on one rank
    by_op: dict[str, float] = field(default_factory=dict)  # kind -> per decode step ("all_reduce": 8.0, ...)
    prefill: int = 0  # collectives of the prefill

    def label(self) -> str:
        """``8 all_reduce + 1 all_gather``: what a step launches."""
        return " + ".join(f"{n:.3g} {op}" for op, n in sorted(self.by_op.items())) or "none"


class CollectiveCounter(OpWatch, Observer):
    """Counts one generation's collectives per step: ``with counter:`` around it, the counter among its observers
    (``begin_step`` tells it the step), then ``counter.report()``. ``watching(model)``: steps from ``model``'s
    forwards instead, for a generation run without observers."""

    def __init__(self) -> None:
        super().__init__()
        self.forward = -1  # the step the next collective belongs to (-1: before the first)
        self.events: list[tuple[int, str, int]] = []  # (forward, kind, payload bytes)
        self._hook: Any = None

    def begin_step(self, step: int) -> None:
        self.forward = step

    def watching(self, model: torch.nn.Module) -> CollectiveCounter:
        """Mark a step at each of ``model``'s forwards (removed when the ``with`` ends)."""

        def mark(_module: torch.nn.Module, _args: Any) -> None:
            self.forward += 1

        self._hook = model.register_forward_pre_hook(mark)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)  # type: ignore[no-untyped-call]
        finally:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None

    def op(self, func: torch._ops.OpOverload, args: Sequence[object], kw: dict[str, object]) -> object:
        out = func(*args, **kw)
        namespace, _, name = func._schema.name.partition("::")
        if namespace in _NAMESPACES and name not in _NOT_COLLECTIVES:
            kind = _KIND_OF.get(name, name)
            payload = _bytes(out) if kind == "all_gather" else _bytes((args, kw))
            self.events.append((self.forward, kind, payload))
        return out

    def report(self) -> CollectiveReport:
        decode = [(kind, size) for step, kind, size in self.events if step >= 1]
        steps = max(self.forward, 0)  # forwards after the prefill
        kinds: Counter[str] = Counter(kind for kind, _ in decode)
        per = 1.0 / steps if steps else 0.0
        return CollectiveReport(
            decode_steps=steps,
            per_step=len(decode) * per,
            bytes_per_step=sum(size for _, size in decode) * per,
            by_op={kind: n * per for kind, n in kinds.items()},
            prefill=sum(1 for step, _, _ in self.events if step == 0),
        )

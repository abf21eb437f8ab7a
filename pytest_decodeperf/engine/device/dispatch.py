"""The TorchDispatchMode scaffolding the engine's three op watchers share: the sync counter
(``measure/syncs.py``), the collective counter (``measure/collectives.py``) and the CUDA simulator
(``sim_cuda.py``).

``OpWatch.op(func, args, kwargs)`` sees every aten op that reaches the dispatcher, with its keyword
arguments as a plain dict, and runs it (``func(*args, **kwargs)``) itself, before or after looking at it.
A watcher inside ``torch.inference_mode`` sees nothing (torch 2.13): watch under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpWatch(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's __init_subclass__
    """Sees every op; subclasses override ``op``."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def op(self, func: torch._ops.OpOverload, args: Sequence[object], kwargs: dict[str, object]) -> object:
        return func(*args, **kwargs)

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Sequence[type],
        args: Sequence[object] = (),
        kwargs: Mapping[str, object] | None = None,
    ) -> object:
        return self.op(func, args, dict(kwargs or {}))

"""The experts a mixture-of-experts model's routers really picked, and the cache a generation really used.

One untimed generation of the variant runs with forward pre-hooks (never inside the timed rounds): one on the model
counts its forwards (forward 0 is the prefill, forward ``i`` decode step ``i``) and keeps the cache it was handed;
one on every fused experts module (``weights.expert_modules``) keeps the expert indices its router handed it
(``experts(hidden_states, top_k_index, top_k_weights)`` in transformers 5: the first integer tensor argument). The
indices are cloned on the device and read only after the generation, so the hooks add no host read to it.

Per decode step and MoE layer the count is the number of *distinct* experts across the batch's tokens (a batch of 8
whose tokens share experts reads each once): the bytes a step must read, not an assumption of uniform routing
(MoE-CAP, ICML 2025, assumes uniform routing). An index at or past ``num_experts`` (transformers' sentinel for a
token routed nowhere, LongCat's zero experts) reads no weights and is not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..decode.caches import CACHE_KEYWORDS

__all__ = ["GenerationProbe", "Routing", "probe_generation"]


@dataclass(frozen=True)
class Routing:
    """Distinct experts each MoE layer ran, per decode step (``per_step[step][layer]``)."""

    groups: tuple[str, ...]
    num_experts: tuple[int, ...]
    per_step: tuple[tuple[int, ...], ...]
    unobserved: tuple[str, ...] = ()  # experts modules no hook saw an index for: their routing is unknown

    @property
    def observed(self) -> bool:
        return bool(self.per_step) and not self.unobserved

    def mean_per_layer(self) -> list[float]:
        """Mean distinct experts per decode step, per MoE layer."""
        steps = len(self.per_step)
        return [sum(step[i] for step in self.per_step) / steps for i in range(len(self.groups))] if steps else []

    @property
    def active_per_step(self) -> float:
        """Mean distinct experts a decode step ran, summed over the MoE layers."""
        return sum(self.mean_per_layer())


@dataclass
class GenerationProbe:
    """What one watched generation saw: the cache it decoded with, and its routing (None: no MoE layer)."""

    cache: Any = None
    routing: Routing | None = None
    forwards: int = 0


@dataclass
class _Watch:
    names: list[str]
    counts: list[int]
    calls: list[list[list[torch.Tensor]]] = field(default_factory=list)  # [forward][group] -> indices
    forwards: int = 0
    cache: Any = None

    def model_hook(self, _module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self.forwards += 1
        self.calls.append([[] for _ in self.names])
        for name in CACHE_KEYWORDS:
            if kwargs.get(name) is not None:
                self.cache = kwargs[name]

    def expert_hook(self, index: int) -> Callable[..., None]:
        def keep(_module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            if not self.calls:
                return
            chosen = next(_integer_tensors(args[1:], kwargs), None)
            if chosen is not None:
                self.calls[-1][index].append(chosen.detach().reshape(-1).clone())  # [tokens * k], on the device

        return keep

    def routing(self) -> Routing:
        per_step: list[tuple[int, ...]] = []
        seen = [False] * len(self.names)
        for forward, groups in enumerate(self.calls):
            row: list[int] = []
            for i, picked in enumerate(groups):
                seen[i] = seen[i] or bool(picked)
                if not picked:
                    row.append(0)
                    continue
                ids = torch.cat(picked)
                row.append(int(torch.unique(ids[(ids >= 0) & (ids < self.counts[i])]).numel()))
            if forward > 0:  # forward 0 is the prefill
                per_step.append(tuple(row))
        unseen = tuple(name for name, ok in zip(self.names, seen, strict=True) if not ok)
        return Routing(tuple(self.names), tuple(self.counts), tuple(per_step), unseen)


def _integer_tensors(args: Any, kwargs: dict[str, Any]) -> Iterator[torch.Tensor]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dtype != torch.bool:
            yield value


def probe_generation(model: torch.nn.Module, run: Callable[[], Any]) -> GenerationProbe:
    """Run ``run()`` (one generation of ``model``) with the watch hooks; removed afterwards, whatever happens."""
    from .weights import expert_modules

    experts = list(expert_modules(model))
    watch = _Watch([name for name, _, _ in experts], [count for _, _, count in experts])
    handles = [model.register_forward_pre_hook(watch.model_hook, with_kwargs=True)]
    try:
        for i, (_, module, _) in enumerate(experts):
            handles.append(module.register_forward_pre_hook(watch.expert_hook(i), with_kwargs=True))
        run()
    finally:
        for handle in handles:
            handle.remove()
    routing = watch.routing() if experts else None
    return GenerationProbe(watch.cache, routing, watch.forwards)

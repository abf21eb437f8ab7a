"""The weight bytes a decode step must read, as opposed to the bytes the model holds.

A step multiplies every dense matrix once (the LM head whole), but it only *gathers* from an embedding table (one
row per token: the input embedding, GPT-2's position table, Gemma 3n/4's per-layer embeddings), and a mixture-of-
experts layer runs only the experts its router picked. So the weights are split by how a step touches them:

* **dense**: every parameter read whole: attention and MLP matrices, norms, routers, shared experts, and the LM
  head (an input embedding tied to it is part of it: one matrix, counted once);
* **embeddings**: every ``nn.Embedding`` not tied to the LM head, read as ``min(tokens, rows)`` rows a step;
* **experts**: every fused experts module of transformers 5 (``self.num_experts`` and stacked matrices whose first
  dimension is the expert: ``gate_up_proj[num_experts, out, in]``, biases ``[num_experts, out]``), read one
  expert's slice per expert the router picked (``routing.py`` counts them). Without a routing count every
  expert is counted: an upper bound.

Storage shared between parameters (tied or aliased weights) is counted once everywhere. A model sharded over
tensor-parallel ranks holds DTensors: each counts as the shard this rank holds and reads (its local tensor's
bytes, not the storage it may be a slice of).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["EmbeddingTable", "ExpertGroup", "WeightLayout", "expert_modules", "weight_layout"]


@dataclass(frozen=True)
class ExpertGroup:
    """One MoE layer's routed experts: ``num_experts`` slices of ``bytes_per_expert`` each."""

    name: str  # the module's path, e.g. ``model.layers.1.mlp.experts``
    num_experts: int
    bytes_per_expert: int


@dataclass(frozen=True)
class EmbeddingTable:
    """A table a step gathers rows from."""

    name: str
    rows: int
    row_bytes: int

    def gathered(self, tokens: float) -> float:
        """Bytes of ``tokens`` rows, at most the whole table."""
        return min(float(tokens), float(self.rows)) * self.row_bytes


@dataclass(frozen=True)
class WeightLayout:
    """A model's parameters by how a decode step reads them (see the module docstring)."""

    resident: int  # every parameter the model holds, shared storage once
    dense: int  # read whole every step
    embeddings: tuple[EmbeddingTable, ...]
    experts: tuple[ExpertGroup, ...]

    @property
    def routed_experts(self) -> int:
        """Routed experts the model holds, over all its MoE layers."""
        return sum(g.num_experts for g in self.experts)

    def gathered(self, tokens: float) -> float:
        """Embedding bytes a forward over ``tokens`` tokens gathers."""
        return sum(table.gathered(tokens) for table in self.embeddings)

    def expert_bytes(self, active: Sequence[float] | None) -> float:
        """Expert bytes read when group ``i`` runs ``active[i]`` distinct experts (None: all of them)."""
        if active is None:
            return float(sum(g.num_experts * g.bytes_per_expert for g in self.experts))
        if len(active) != len(self.experts):
            raise ValueError(f"{len(active)} expert counts for {len(self.experts)} MoE layers")
        return sum(min(float(n), g.num_experts) * g.bytes_per_expert for n, g in zip(active, self.experts, strict=True))

    def per_step(self, tokens: float, active: Sequence[float] | None = None) -> float:
        """Weight bytes a forward over ``tokens`` tokens reads: dense, gathered rows, routed experts."""
        return self.dense + self.gathered(tokens) + self.expert_bytes(active)


def _local(param: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this process holds: a DTensor's local shard, else the parameter itself."""
    to_local = getattr(param, "to_local", None)
    return to_local() if callable(to_local) else param


def _held(param: torch.Tensor) -> int:
    """Bytes of ``param`` this process holds: its storage, or a DTensor's local shard (maybe a slice of one)."""
    local = _local(param)
    return int(local.nbytes) if local is not param else param.untyped_storage().nbytes()


def _storage(param: torch.Tensor) -> tuple[str, int]:
    param = _local(param)
    return str(param.device), param.untyped_storage().data_ptr() or id(param.untyped_storage())


def expert_modules(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module, int]]:
    """``(path, module, num_experts)`` of every fused experts module: an integer ``num_experts`` > 1 and a stack
    of matrices of its own whose first dimension is the expert (a router's ``[num_experts, hidden]`` is not one)."""
    for name, module in model.named_modules():
        count = getattr(module, "num_experts", None)
        if not isinstance(count, int) or isinstance(count, bool) or count < 2:
            continue
        if any(p.dim() >= 3 and p.shape[0] == count for p in module.parameters(recurse=False)):
            yield name, module, count


def _output_storages(model: torch.nn.Module) -> set[tuple[str, int]]:
    """The storage of the LM head's weight (read whole; an input embedding tied to it is the same matrix)."""
    getter = getattr(model, "get_output_embeddings", None)
    try:
        head = getter() if callable(getter) else None
    except (AttributeError, NotImplementedError):
        head = None
    weight = getattr(head, "weight", None)
    return {_storage(weight)} if isinstance(weight, torch.Tensor) else set()


def weight_layout(model: torch.nn.Module) -> WeightLayout:
    """Split ``model``'s parameters into dense, gathered-embedding and routed-expert bytes."""
    seen: set[tuple[str, int]] = set()
    resident = 0
    for param in model.parameters():
        key = _storage(param)
        if key not in seen:
            seen.add(key)
            resident += _held(param)
    routed: dict[tuple[str, int], int] = {}  # storage -> its group's index
    groups: list[ExpertGroup] = []
    for name, module, count in expert_modules(model):
        per_expert = 0
        for param in module.parameters(recurse=False):
            if param.dim() >= 1 and param.shape[0] == count and _storage(param) not in routed:
                routed[_storage(param)] = len(groups)
                per_expert += _held(param) // count
        groups.append(ExpertGroup(name, count, per_expert))
    head = _output_storages(model)
    tables: list[EmbeddingTable] = []
    gathered: set[tuple[str, int]] = set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Embedding) or not isinstance(weight, torch.Tensor):
            continue
        key = _storage(weight)
        if key in head or key in gathered or key in routed:
            continue
        gathered.add(key)
        rows = int(_local(weight).shape[0])
        tables.append(EmbeddingTable(name, rows, _held(weight) // max(rows, 1)))
    sparse = sum(g.num_experts * g.bytes_per_expert for g in groups) + sum(t.rows * t.row_bytes for t in tables)
    return WeightLayout(resident, resident - sparse, tuple(tables), tuple(groups))

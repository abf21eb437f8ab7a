"""Tensor-parallel decode: which models transformers can shard, loading them sharded, and what a sharded
variant adds to a measurement.

transformers shards a checkpoint at load time (``from_pretrained(path, distributed_config=DistributedConfig(
tp_size=N))``; ``tp_plan="auto"`` before 5.18) by the plan its config class declares (``base_model_tp_plan``:
attention and MLP projections column- then row-wise, so each layer all-reduces its outputs), over every rank of
the process group (``distributed.py``). A zoo model is built with its seeded weights, saved once per process
with ``save_pretrained`` and loaded back sharded, the path a real checkpoint takes.

On top of the single-process measurement a sharded variant gets (``Sharded``): each round timed as the slowest
rank saw it (combined after the round), every rank's tokens gathered once at the end and compared (a rank that
diverges fails the item naming it), syncs and collectives counted on every rank (the worst rank's kept), and a
roofline per rank: the weights it holds (its shards), its share of the K/V, plus the collectives' payload.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from transformers import PreTrainedConfig, PreTrainedModel

from ...errors import DecodePerfError
from ..measure.collectives import CollectiveCounter, CollectiveReport
from ..measure.counting import SyncReport
from ..roofline.analytic import StepBytes
from ..roofline.variant import Roofline
from ..spec.models import MODELS, build_model, is_checkpoint, resolve_dtype, set_attn
from ..spec.variants import Variant
from .distributed import RankGroup

__all__ = ["Sharded", "ShardedStep", "load_sharded", "model_config", "shard_refusal", "sharded_roofline", "shards"]


@dataclass(frozen=True)
class TPInfo:
    """The ranks a variant ran on (tensor parallel: ``tensor_parallel.py``)."""

    tp: int  # ranks the model was sharded over
    world_size: int  # processes in the launch (1: one process)
    backend: str | None  # the group the model's collectives ran on, nccl or gloo (None: not sharded)
    collectives: CollectiveReport | None = None  # per decode step, counted in the untimed sync-counting generation

    def fields(self) -> dict[str, Any]:
        """The record's tensor-parallel fields."""
        c = self.collectives
        return {
            "tp": self.tp,
            "world_size": self.world_size,
            "backend": self.backend,
            "collectives_per_step": c.per_step if c else None,
            "collective_bytes_per_step": c.bytes_per_step if c else None,
            "collective_ops": dict(c.by_op) if c else {},
        }


def model_config(name: str) -> PreTrainedConfig:
    """A zoo model's or a checkpoint's config, without its weights (the zoo's on the meta device)."""
    if is_checkpoint(name):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=False)
            return cast(PreTrainedConfig, config)
        except Exception as exc:  # a damaged config: one line
            raise DecodePerfError(f"checkpoint {name!r}: its config does not load: {exc}".splitlines()[0]) from None
    with torch.device("meta"):
        return MODELS[name].build().config


def shard_refusal(config: PreTrainedConfig, tp: int) -> str | None:
    """Why transformers cannot shard a model of ``config`` over ``tp`` ranks (None: it can)."""
    if tp <= 1:
        return None
    text = config.get_text_config(decoder=True)
    name = type(config).__name__
    if not (getattr(text, "base_model_tp_plan", None) or getattr(config, "base_model_tp_plan", None)):
        return (
            f"{name} has no tensor-parallel plan in transformers {transformers.__version__} (base_model_tp_plan): "
            "only tp=1 runs it"
        )
    heads = getattr(text, "num_attention_heads", None)
    kv = getattr(text, "num_key_value_heads", None) or heads
    if isinstance(heads, int) and isinstance(kv, int) and (heads % tp or kv % tp):
        return f"tp={tp} does not divide {name}'s {heads} query / {kv} key-value heads"
    return None


def shards(model: torch.nn.Module) -> int:
    """Ranks ``model`` is sharded over (1: not sharded)."""
    size = getattr(model, "tp_size", None) or getattr(model, "_tp_size", None)
    return int(size) if isinstance(size, int) and size > 1 else 1


_SAVED: dict[tuple[str, str, int], Path] = {}


def _saved(name: str, dtype: str, seed: int) -> Path:
    """Zoo model ``name`` with its seeded weights, saved once per process in a temporary folder."""
    key = (name, dtype, seed)
    if key not in _SAVED:
        folder = Path(tempfile.mkdtemp(prefix=f"decodeperf-tp-{name}-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        model = build_model(name, "cpu", dtype, seed=seed)
        # Under torch.distributed transformers writes on rank 0 only; each rank saves to its own folder here
        # (ranks on other nodes see no folder of rank 0's).
        cast(Any, model).should_save_on_this_rank = lambda is_main_process: True
        model.save_pretrained(folder)
        _SAVED[key] = folder
    return _SAVED[key]


def _tp_kwargs(tp: int) -> dict[str, Any]:
    try:
        from transformers.distributed.configuration_utils import DistributedConfig
    except ImportError:  # before transformers 5.18
        return {"tp_plan": "auto", "tp_size": tp}
    return {"distributed_config": DistributedConfig(tp_size=tp)}


def load_sharded(name: str, dtype: str, tp: int, seed: int = 0, attn: str | None = None) -> PreTrainedModel:
    """Zoo model or checkpoint ``name`` sharded over the ``tp`` ranks of the process group, on this rank's device,
    with attention kernel ``attn`` (None: the model's default)."""
    if importlib.util.find_spec("accelerate") is None:
        raise DecodePerfError(
            "tensor-parallel loading needs the accelerate package (transformers refuses a tp plan without it): "
            "pip install accelerate"
        )
    refusal = shard_refusal(model_config(name), tp)
    if refusal is not None:
        raise DecodePerfError(f"{name}: {refusal}")
    path = Path(name).expanduser() if is_checkpoint(name) else _saved(name, dtype, seed)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, dtype=resolve_dtype(dtype), **_tp_kwargs(tp)
        )
    except Exception as exc:  # the loader's many failures, a rank's collective timing out: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DecodePerfError(f"{name} does not load sharded over {tp} ranks: {first}") from None
    cast(Any, model).eval()
    return set_attn(cast(PreTrainedModel, model), attn, name)


def _worst(reports: list[Any], key: Any) -> Any:
    present = [r for r in reports if r is not None]
    return max(present, key=key) if present else None


class Sharded:
    """A sharded variant's measurement across ranks: what ``Runner._run`` asks of the ranks, in one place."""

    def __init__(self, ranks: RankGroup | None, model: torch.nn.Module, variant: Variant):
        if ranks is None:
            raise DecodePerfError(
                f"{variant.id}: tp={variant.tp} needs {variant.tp} ranks: run under torchrun, or let the plugin "
                "start them (pytest --decodeperf)"
            )
        if ranks.world_size != variant.tp:
            raise DecodePerfError(f"{variant.id}: tp={variant.tp}, but this launch has {ranks.world_size} ranks")
        if shards(model) != variant.tp:
            raise DecodePerfError(
                f"{variant.id}: the model is sharded over {shards(model)} rank(s), the variant says tp={variant.tp}: "
                "load it with from_pretrained(path, distributed_config=DistributedConfig(tp_size=N)) in your "
                "decode_model fixture, or let the plugin load it (a zoo name or a checkpoint in models=)"
            )
        self.ranks = ranks
        self.variant = variant
        self.counter = CollectiveCounter()  # runs in the runner's untimed sync-counting generation

    def finish(
        self, syncs: SyncReport | None, roofline: Roofline, generated: torch.Tensor
    ) -> tuple[SyncReport | None, Roofline, TPInfo]:
        """After the measurement, on every rank alike: the worst rank's syncs and collectives, the roofline
        of one rank (the one place it is sharded: ``sharded_roofline``), every rank's tokens compared."""
        mine = self.counter.report() if self.counter.forward >= 0 else None  # None: not counted (torch.compile)
        collectives = self.collectives(mine)
        worst = self.syncs(syncs)
        self.check_tokens(generated)
        return worst, sharded_roofline(roofline, self.variant.tp, collectives), self.info(collectives)

    def check_tokens(self, generated: torch.Tensor) -> None:
        """Every rank's tokens, gathered once after the generation: a rank that diverges fails on every rank."""
        seen: list[torch.Tensor] = self.ranks.exchange(generated.cpu())
        first = seen[0]
        for rank, tokens in enumerate(seen[1:], 1):
            if tokens.shape != first.shape:
                problem = f"generated {tuple(tokens.shape)} tokens, rank 0 {tuple(first.shape)}"
            elif not torch.equal(tokens, first):
                row, pos = (int(i) for i in (tokens != first).nonzero()[0])
                mine, theirs = int(tokens[row, pos]), int(first[row, pos])
                problem = f"differs from rank 0 at row {row}, position {pos} ({mine} vs {theirs})"
            else:
                continue
            raise DecodePerfError(f"{self.variant.id}: rank {rank}'s output {problem}: the ranks diverged")

    def syncs(self, report: SyncReport | None) -> SyncReport | None:
        """The rank with the most hidden reads in a step (every rank counted its own)."""
        return cast(
            "SyncReport | None", _worst(self.ranks.exchange(report), lambda r: (r.max_hidden, r.hidden_per_step))
        )

    def collectives(self, report: CollectiveReport | None) -> CollectiveReport | None:
        return cast(
            "CollectiveReport | None", _worst(self.ranks.exchange(report), lambda r: (r.per_step, r.bytes_per_step))
        )

    def info(self, collectives: CollectiveReport | None) -> TPInfo:
        return TPInfo(self.variant.tp, self.ranks.world_size, self.ranks.backend, collectives)


def sharded_roofline(roof: Roofline, tp: int, collectives: CollectiveReport | None) -> Roofline:
    """One rank's roofline: its K/V and state are a ``1/tp`` share, and a step also moves its collectives' payload.

    The weights are already this rank's (``weights.py`` counts the local shards it holds: sharded projections
    at ``1/tp``, norms and unsharded tables whole). Applied once, in ``Runner._run``.
    """
    step = roof.step
    if step is None:
        return roof
    moved = collectives.bytes_per_step if collectives is not None else 0.0
    scaled = ShardedStep(
        **{f: getattr(step, f) for f in step.__dataclass_fields__},
        collective=moved,
    )
    scaled = replace(scaled, kv_read=step.kv_read / tp, kv_written=step.kv_written / tp, state=step.state / tp)
    return replace(roof, step=scaled)


@dataclass(frozen=True)
class ShardedStep(StepBytes):
    """A rank's step: ``StepBytes`` plus the collectives' payload bytes it moves."""

    collective: float = 0.0

    @property
    def total(self) -> float:
        return super().total + self.collective

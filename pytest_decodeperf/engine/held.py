"""What a runner holds between variants: models built once, and per model object its workloads, compiled
wrappers, reference tokens and the answers of its one-off probes.

Per model object, never per ``id()``: Python reuses the ids of freed objects, and a new model must not inherit a
freed one's prompts, stops or reference tokens (a ``WeakKeyDictionary``, so holding state keeps no model alive).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from .decode.refusals import accepts_causal_mask, ignored_cache_refusal
from .measure.profiling import compile_counters
from .spec.models import build_model, load_tokenizer
from .spec.variants import SELF_DRAFT, Variant
from .spec.workload import Workload, make_workload


def workload_key(variant: Variant) -> tuple[Any, ...]:
    """What makes a variant's workload: variants with one key decode the same prompts to the same stops."""
    return (variant.batch_size, variant.new_tokens, variant.stop, variant.prompt_len, variant.prompts)


@dataclass
class ModelState:
    """What is kept per model object: workloads, compiled wrappers, tokens, probe answers."""

    workloads: dict[tuple[Any, ...], Workload] = field(default_factory=dict)
    compiled: dict[bool | str, Any] = field(default_factory=dict)
    graphs_before: dict[bool | str, int] = field(default_factory=dict)  # dynamo's graph count at compile time
    baselines: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)
    references: dict[tuple[Any, ...], tuple[torch.Tensor, str]] = field(default_factory=dict)
    takes_causal_mask: bool | None = None
    tokenizer: tuple[Any] | None = None  # (the tokenizer beside the model's checkpoint, or None,), looked up once
    cache_refusal: tuple[str | None] | None = None  # (why the model cannot be given a cache,), probed once

    def ready_mask(self, model: PreTrainedModel) -> bool:
        """Whether the model gives the same logits with a ready 4-D causal mask (probed once)."""
        if self.takes_causal_mask is None:
            self.takes_causal_mask = accepts_causal_mask(getattr(model, "_orig_mod", model))
        return self.takes_causal_mask

    def refusal(self, model: PreTrainedModel) -> str | None:
        """Why ``model`` ignores a cache it is given (probed once), or None."""
        if self.cache_refusal is None:
            self.cache_refusal = (ignored_cache_refusal(model),)
        return self.cache_refusal[0]


class Held:
    """The models, workloads and compiled wrappers of one runner (``runner.py``)."""

    def __init__(self, device: torch.device, seed: int):
        self.device = device
        self.seed = seed
        self.models: dict[tuple[str, str, int, str | None], PreTrainedModel] = {}
        self.drafts: dict[str, PreTrainedModel] = {}  # hf-assisted's drafts given by label (an item's draft_model)
        self.state: weakref.WeakKeyDictionary[PreTrainedModel, ModelState] = weakref.WeakKeyDictionary()
        self._last_compiled: weakref.ref[PreTrainedModel] | None = None

    def of(self, model: PreTrainedModel) -> ModelState:
        return self.state.setdefault(model, ModelState())

    def model(self, name: str, dtype: str = "float32", tp: int = 1, attn: str | None = None) -> PreTrainedModel:
        """Zoo model or checkpoint ``name``, built once per dtype, ranks and attention kernel (one object per kernel:
        the kernel is the model's config, so two kernels cannot share it); ``tp`` > 1: sharded over the ranks."""
        key = (name, dtype, tp, attn)
        if key not in self.models:
            if tp > 1:
                from .parallel.tensor_parallel import load_sharded

                self.models[key] = load_sharded(name, dtype, tp, seed=self.seed, attn=attn)
            else:
                self.models[key] = build_model(name, self.device, dtype, seed=self.seed, attn=attn)
        return self.models[key]

    def draft(self, variant: Variant, model: PreTrainedModel) -> PreTrainedModel | None:
        """``hf-assisted``'s draft: one given by label (``drafts``), ``model`` itself for ``draft="self"``, else the
        zoo model or checkpoint the label names."""
        if variant.stream != "hf-assisted" or variant.draft is None:
            return None
        if variant.draft in self.drafts:
            return self.drafts[variant.draft]
        return model if variant.draft == SELF_DRAFT else self.model(variant.draft, variant.dtype)

    def tokenizer(self, model: PreTrainedModel) -> Any:
        """The tokenizer saved beside ``model``'s checkpoint (its ``name_or_path``), or None."""
        state = self.of(model)
        if state.tokenizer is None:
            path = str(getattr(model, "name_or_path", "") or "")
            state.tokenizer = (load_tokenizer(path) if path else None,)
        return state.tokenizer[0]

    def workload(self, model: PreTrainedModel, variant: Variant) -> Workload:
        workloads = self.of(model).workloads
        key = workload_key(variant)
        if key not in workloads:
            tokenizer = self.tokenizer(model) if variant.prompts == "text" else None
            workloads[key] = make_workload(
                model,
                variant.batch_size,
                variant.new_tokens,
                variant.stop,
                variant.prompt_len,
                self.seed,
                variant.prompts,
                tokenizer,
            )
        return workloads[key]

    def compiled(self, model: PreTrainedModel, variant: Variant) -> PreTrainedModel:
        """``model``, or its ``torch.compile`` wrapper in the variant's mode (made once)."""
        if not variant.compile:
            return model
        state = self.of(model)
        if variant.compile not in state.compiled:
            if self._last_compiled is not None and self._last_compiled() is not model:
                # Dynamo's recompile limit is shared per code object: after a few models, later
                # ones would silently run eager (0 graphs). Each model starts from a clean slate.
                torch._dynamo.reset()
                for other in list(self.state.values()):
                    other.compiled.clear()
            self._last_compiled = weakref.ref(model)
            mode = None if variant.compile is True or variant.compile == "default" else str(variant.compile)
            state.graphs_before[variant.compile] = compile_counters()["unique_graphs"]
            state.compiled[variant.compile] = torch.compile(model, mode=mode)
        compiled: PreTrainedModel = state.compiled[variant.compile]
        return compiled

    def forget_tokens(self) -> None:
        """Drop every kept token tensor (after an out-of-memory, or at the end)."""
        for state in self.state.values():
            state.baselines.clear()
            state.references.clear()

"""KV-cache strategies: how the decode loop keeps (or does not keep) past keys and values.

A strategy is a few lines: a name, a factory, and two flags. Adding an offloaded or quantized
transformers cache means one more ``register_cache`` call, e.g.::

    register_cache(CacheStrategy(
        "offloaded", lambda model, batch, max_len: DynamicCache(config=model.config, offloading=True)))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import Cache, DynamicCache, PreTrainedModel, StaticCache

from ...errors import DecodePerfError, check_choice

CacheFactory = Callable[[PreTrainedModel, int, int], Cache | None]


@dataclass(frozen=True)
class CacheStrategy:
    """How to make the Cache for one generation.

    ``feeds_full_sequence``: no cache; every step re-runs the whole sequence (the article's naive loop).
    ``preallocated``: the cache is made once, outside the timed region, and ``reset()`` before each
    generation, the way a server keeps its static cache (allocation is not per request).
    """

    name: str
    make: CacheFactory
    feeds_full_sequence: bool = False
    preallocated: bool = False
    description: str = ""  # one line for the reference pages and --help


CACHES: dict[str, CacheStrategy] = {}

# The keyword a model's forward takes its cache by: transformers 5.24 renamed ``past_key_values`` to
# ``cache`` (the old name still works there, with a FutureWarning on every call, until 5.40).
CACHE_KEYWORDS = ("cache", "past_key_values")


_PARAMETERS_OF: dict[type, frozenset[str]] = {}  # per model class: the decode loop asks every step


def forward_parameters(model: Any) -> frozenset[str]:
    """The parameter names of ``model``'s forward.

    Judged by the class's forward, not the instance's: a user's wrapper (``model.forward =
    timed(...)``) takes ``*args, **kwargs`` and says nothing, and a ``torch.compile`` wrapper stands
    for its ``_orig_mod``. Looked up once per class: the decode loop asks every step.
    """
    cls = type(getattr(model, "_orig_mod", model))
    if cls not in _PARAMETERS_OF:
        _PARAMETERS_OF[cls] = frozenset(inspect.signature(cls.forward).parameters)
    return _PARAMETERS_OF[cls]


def cache_keyword(model: Any) -> str | None:
    """The keyword ``model``'s forward takes a Cache by (None: it takes none)."""
    params = forward_parameters(model)
    return next((name for name in CACHE_KEYWORDS if name in params), None)


def register_cache(strategy: CacheStrategy) -> CacheStrategy:
    """Add a strategy to the registry (replacing one of the same name) and return it."""
    CACHES[strategy.name] = strategy
    return strategy


def get_cache(name: str) -> CacheStrategy:
    return CACHES[check_choice("cache type", name, CACHES)]


register_cache(
    CacheStrategy(
        "none",
        lambda model, batch, max_len: None,
        feeds_full_sequence=True,
        description="no cache: every step re-runs the whole sequence (the article's naive loop)",
    )
)
register_cache(
    CacheStrategy(
        "dynamic",
        lambda model, batch, max_len: DynamicCache(config=model.config),
        description="transformers' DynamicCache (config-built: per-layer-type layers), grown every step",
    )
)
register_cache(
    CacheStrategy(
        "static",
        lambda model, batch, max_len: StaticCache(config=model.config, max_cache_len=max_len),
        preallocated=True,
        description="transformers' StaticCache, allocated once outside the timed region and reset per round",
    )
)


class CacheSlot:
    """The cache one variant decodes with, kept across measurement rounds when preallocated."""

    def __init__(self, strategy: CacheStrategy, model: PreTrainedModel, batch_size: int, max_len: int):
        self.strategy = strategy
        self.model = model
        self.batch_size = batch_size
        self.max_len = max_len
        self._kept: Cache | None = strategy.make(model, batch_size, max_len) if strategy.preallocated else None

    @property
    def kept(self) -> Cache | None:
        """The preallocated cache (None for a cache made per generation)."""
        return self._kept

    def fresh(self) -> Cache | None:
        """An empty cache for one generation (reset in place when preallocated)."""
        if self._kept is not None:
            self._kept.reset()  # type: ignore[no-untyped-call]
            return self._kept
        return self.strategy.make(self.model, self.batch_size, self.max_len)

    def check_capacity(self, needed: int) -> None:
        if self.strategy.preallocated and needed > self.max_len:
            raise DecodePerfError(
                f"{self.strategy.name} cache holds {self.max_len} positions but prompt + new tokens "
                f"need {needed}; raise the cache length to at least {needed}"
            )


def _paged(model: PreTrainedModel, batch: int, max_len: int) -> Cache | None:
    raise DecodePerfError(
        "cache 'paged' is continuous batching's own (stream 'hf-serve'): the decode loop cannot use it"
    )


register_cache(
    CacheStrategy(
        "paged",
        _paged,
        description="transformers' paged cache, continuous batching's own (stream hf-serve only), sized per run",
    )
)

"""Shared builders for the asv suite: one Runner per process, results of a whole matrix at once."""

from __future__ import annotations

import functools
import itertools
from typing import Any

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.device.machine import resolve_device
from pytest_decodeperf.engine.spec.models import default_model_name

DEVICE = resolve_device("auto")
MODEL = default_model_name(DEVICE)
CACHES = ["none", "dynamic", "static"]
STREAMS = ["baseline", "deferred", "pipelined", "nostop"]
BATCHES = [1, 8] if DEVICE.type == "cpu" else [1, 8, 32]
NEW_TOKENS = 64 if DEVICE.type == "cpu" else 100


@functools.lru_cache(maxsize=1)
def runner() -> Runner:
    return Runner(DEVICE, rounds=5, warmup=1)


def variant(model: str, cache: str, stream: str, batch_size: int) -> Variant:
    return Variant(model, cache, stream, int(batch_size), NEW_TOKENS, stop="eos")


def measure_matrix(models: list[str], caches: list[str], streams: list[str], batches: list[int]) -> dict[Any, Any]:
    """Record of every combination, keyed by (model, cache, stream, batch) as asv passes params."""
    out = {}
    for key in itertools.product(models, caches, streams, batches):
        out[key] = runner().run(variant(*key)).record()
    return out

"""Shared builders for the asv suite: one Runner per process, results of a whole matrix at once."""

from __future__ import annotations

import functools
from typing import Any

from pytest_decodeperf import Runner
from pytest_decodeperf.engine.device.machine import resolve_device
from pytest_decodeperf.engine.spec.models import default_model_name
from pytest_decodeperf.engine.spec.variants import matrix

DEVICE = resolve_device("auto")
MODEL = default_model_name(DEVICE)
CACHES = ["none", "dynamic", "static"]
STREAMS = ["baseline", "deferred", "pipelined", "nostop"]
BATCHES = [1, 8] if DEVICE.type == "cpu" else [1, 8, 32]
NEW_TOKENS = 64 if DEVICE.type == "cpu" else 100


@functools.lru_cache(maxsize=1)
def runner() -> Runner:
    return Runner(DEVICE, rounds=5, warmup=1)


def measure_matrix(models: list[str], caches: list[str], streams: list[str], batches: list[int]) -> dict[Any, Any]:
    """Record of every combination, keyed by (model, cache, stream, batch) as asv passes params."""
    out = {}
    for v in matrix(models, caches, streams, [int(b) for b in batches], [NEW_TOKENS]):
        out[(v.model, v.cache, v.stream, v.batch_size)] = runner().run(v).record()
    return out

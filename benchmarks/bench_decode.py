"""asv benchmarks of token generation: the engine's variants over model x cache x stream x batch.

``track_`` methods report what the engine measured (device clock, medians of its rounds); the
``time_`` benchmark lets asv time one whole generation itself. Lower is better for every metric
but tokens/s, which is tracked for the dashboard; regressions are judged on s/token and ms.
"""

from __future__ import annotations

from typing import Any

import torch

from pytest_decodeperf import generate, make_workload
from pytest_decodeperf.engine.decode.caches import CacheSlot, get_cache
from pytest_decodeperf.engine.decode.stream_modes import get_stop_policy

from . import common

PARAMS = ([common.MODEL], common.CACHES, common.STREAMS, common.BATCHES)
PARAM_NAMES = ["model", "cache", "stream", "batch_size"]


class DecodeMetrics:
    """Per-variant metrics measured once per environment (setup_cache), read by each track_."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 1800
    version = "decodeperf-1"

    def setup_cache(self) -> dict[Any, Any]:
        return common.measure_matrix(*PARAMS)

    def track_seconds_per_token(
        self, results: dict[Any, Any], model: str, cache: str, stream: str, batch: int
    ) -> float:
        return float(results[(model, cache, stream, batch)]["ms_per_token"]) / 1e3

    track_seconds_per_token.unit = "seconds"  # type: ignore[attr-defined]

    def track_prefill_ms(self, results: dict[Any, Any], model: str, cache: str, stream: str, batch: int) -> float:
        value = results[(model, cache, stream, batch)]["prefill_ms"]
        return float("nan") if value is None else float(value)

    track_prefill_ms.unit = "ms"  # type: ignore[attr-defined]

    def track_tokens_per_s(self, results: dict[Any, Any], model: str, cache: str, stream: str, batch: int) -> float:
        return float(results[(model, cache, stream, batch)]["tokens_per_s"])

    track_tokens_per_s.unit = "tokens/s"  # type: ignore[attr-defined]

    def track_peak_reserved_bytes(
        self, results: dict[Any, Any], model: str, cache: str, stream: str, batch: int
    ) -> float:
        value = results[(model, cache, stream, batch)]["peak_reserved_bytes"]
        return float("nan") if value is None else float(value)

    track_peak_reserved_bytes.unit = "bytes"  # type: ignore[attr-defined]

    def track_itl_p99_seconds(self, results: dict[Any, Any], model: str, cache: str, stream: str, batch: int) -> float:
        value = results[(model, cache, stream, batch)].get("itl_p99_ms")  # absent before per-step timing
        return float("nan") if value is None else float(value) / 1e3

    track_itl_p99_seconds.unit = "seconds"  # type: ignore[attr-defined]

    def track_bytes_per_step(self, results: dict[Any, Any], model: str, cache: str, stream: str, batch: int) -> float:
        value = results[(model, cache, stream, batch)]["bytes_per_step"]  # what a step reads (weights, K/V, state)
        return float("nan") if value is None else float(value)

    track_bytes_per_step.unit = "bytes"  # type: ignore[attr-defined]


class Generate:
    """asv times one whole generation (prefill + decode + stop checks) itself."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600
    version = "decodeperf-1"

    def setup(self, model: str, cache: str, stream: str, batch: int) -> None:
        self.model = common.runner().model(model)
        self.workload = make_workload(self.model, int(batch), common.NEW_TOKENS)
        self.slot = CacheSlot(
            get_cache(cache), self.model, int(batch), self.workload.prompts.shape[1] + common.NEW_TOKENS
        )
        self.policy = get_stop_policy(stream)

    def time_generate(self, model: str, cache: str, stream: str, batch: int) -> None:
        with torch.inference_mode():
            generate(self.model, self.workload, self.slot, self.policy)
        if common.DEVICE.type == "cuda":
            torch.cuda.synchronize()

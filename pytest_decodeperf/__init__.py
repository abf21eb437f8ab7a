"""pytest-decodeperf: regression tests for the speed and output parity of token generation.

Your own generation code is a stream mode (``engine/decode/custom.py``)::

    from pytest_decodeperf import decoder

    @decoder("my-loop")
    def my_loop(model, inputs): ...   # returns the new tokens [batch, <= inputs.max_new_tokens]

The engine (models, caches, stop policies, the decode loop, measurement) works without pytest::

    from pytest_decodeperf import Runner, Variant
    result = Runner("cpu").run(Variant("tiny-gpt2", cache="static", stream="pipelined", batch_size=8))
    print(result.record()["tokens_per_s"], result.parity)

The names below are imported on first use: pytest loads this package in every session of every
project where it is installed, so importing it must not import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import DecodePerfError

if TYPE_CHECKING:
    from .engine.decode.caches import CACHES, CacheStrategy, register_cache
    from .engine.decode.custom import DecoderInputs, decoder
    from .engine.decode.loop import DecodeOutput, generate
    from .engine.decode.request import Request
    from .engine.decode.stream_modes import STOP_POLICIES, StopPolicy, register_stop_policy
    from .engine.parity.compare import ParityReport, check_parity
    from .engine.results import VariantResult
    from .engine.runner import Runner
    from .engine.spec.models import MODELS, build_model, default_model_name
    from .engine.spec.variants import Variant
    from .engine.spec.workload import Workload, make_workload

_LAZY: dict[str, str] = {
    "decoder": "engine.decode.custom",
    "DecoderInputs": "engine.decode.custom",
    "CACHES": "engine.decode.caches",
    "CacheStrategy": "engine.decode.caches",
    "register_cache": "engine.decode.caches",
    "DecodeOutput": "engine.decode.loop",
    "Request": "engine.decode.request",
    "generate": "engine.decode.loop",
    "MODELS": "engine.spec.models",
    "build_model": "engine.spec.models",
    "default_model_name": "engine.spec.models",
    "ParityReport": "engine.parity.compare",
    "check_parity": "engine.parity.compare",
    "Runner": "engine.runner",
    "VariantResult": "engine.results",
    "STOP_POLICIES": "engine.decode.stream_modes",
    "StopPolicy": "engine.decode.stream_modes",
    "register_stop_policy": "engine.decode.stream_modes",
    "Variant": "engine.spec.variants",
    "Workload": "engine.spec.workload",
    "make_workload": "engine.spec.workload",
}

__all__ = [
    "CACHES",
    "MODELS",
    "STOP_POLICIES",
    "CacheStrategy",
    "DecodeOutput",
    "DecodePerfError",
    "DecoderInputs",
    "ParityReport",
    "Request",
    "Runner",
    "StopPolicy",
    "Variant",
    "VariantResult",
    "Workload",
    "build_model",
    "check_parity",
    "decoder",
    "default_model_name",
    "generate",
    "make_workload",
    "register_cache",
    "register_stop_policy",
]

__version__ = "0.3.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""pytest-decodeperf: regression tests for the speed and output parity of token generation.

The engine (models, caches, stop policies, the decode loop, measurement) works without pytest::

    from pytest_decodeperf import Runner, Variant
    result = Runner("cpu").run(Variant("tiny-gpt2", cache="static", stream="pipelined", batch_size=8))
    print(result.record()["tokens_per_s"], result.parity)
"""

from .caches import CACHES, CacheStrategy, register_cache
from .decode import DecodeOutput, generate
from .errors import DecodePerfError
from .models import MODELS, build_model, default_model_name
from .parity import ParityReport, check_parity
from .runner import Runner, VariantResult
from .stops import STOP_POLICIES, StopPolicy, register_stop_policy
from .variants import Variant
from .workload import Workload, make_workload

__all__ = [
    "CACHES",
    "MODELS",
    "STOP_POLICIES",
    "CacheStrategy",
    "DecodeOutput",
    "DecodePerfError",
    "ParityReport",
    "Runner",
    "StopPolicy",
    "Variant",
    "VariantResult",
    "Workload",
    "build_model",
    "check_parity",
    "default_model_name",
    "generate",
    "make_workload",
    "register_cache",
    "register_stop_policy",
]

__version__ = "0.1.0"

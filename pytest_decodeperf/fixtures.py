"""The plugin's fixtures, registered beside its hooks (``plugin.py``) as a plugin of their own.

``decode_variant``, ``cache_type`` and ``stream_mode`` describe the item; ``decode_model`` gives its model (override
it in conftest.py to measure your own); ``decode_result`` hands the measured result to the test body. The variant
is measured in the call phase, after every fixture of the item is set up (``_decodeperf_autorun`` sets up the
model first), so a fixture that patches the model is measured too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from .protocol import MODEL_KEY, session

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .engine.results import VariantResult
    from .engine.spec.variants import Variant


@pytest.fixture
def _decodeperf_param() -> tuple[Variant, bool] | None:
    """Replaced by the marker's parametrization; None on unmarked tests."""
    return None


def _param_or_fail(param: tuple[Variant, bool] | None) -> tuple[Variant, bool]:
    if param is None:
        pytest.fail("decode perf fixtures need the @pytest.mark.decode_perf marker on the test", pytrace=False)
    return param


@pytest.fixture
def decode_variant(_decodeperf_param: tuple[Variant, bool] | None) -> Variant:
    """The variant (model, cache, stream mode, batch, length, stop, compile) of this item."""
    return _param_or_fail(_decodeperf_param)[0]


@pytest.fixture
def cache_type(decode_variant: Variant) -> str:
    """The KV-cache type of this item: none, dynamic, static, ..."""
    return decode_variant.cache


@pytest.fixture
def stream_mode(decode_variant: Variant) -> str:
    """The stream mode of this item: baseline, pipelined, deferred, nostop, a generate() mode, your decoder..."""
    return decode_variant.stream


@pytest.fixture
def decode_model(request: pytest.FixtureRequest, decode_variant: Variant) -> PreTrainedModel:
    """The model for this item's ``models`` value; override it in conftest.py to measure your own (build it in
    ``decode_variant.dtype`` with ``decode_variant.attn`` as its ``attn_implementation``: a mismatch is refused)."""
    v = decode_variant
    return session(request.config).runner.model(v.model, v.dtype, v.tp, v.attn)


@pytest.fixture
def decode_result(_decodeperf_param: tuple[Variant, bool] | None) -> VariantResult | None:
    """The measured result of this item (tokens, metrics, parity verdict), in the test body.

    The variant is measured in the call phase, after every fixture of the item is set up, so a
    fixture that patches the model is measured too; this value is filled in just before the body runs.
    """
    _param_or_fail(_decodeperf_param)
    return None


@pytest.fixture(autouse=True)
def _decodeperf_autorun(request: pytest.FixtureRequest, _decodeperf_param: tuple[Variant, bool] | None) -> None:
    """Set up the model of every marked item, so the call phase can measure it and a test body may be empty."""
    dp = session(request.config)
    if _decodeperf_param is None or not dp.settings.enabled:
        return
    if dp.delegated:
        return  # under --decodeperf-ab the two workers set up the model, each in its own tree
    if dp.ranks is not None and not dp.ranks.runs(_decodeperf_param[0]):
        return  # a rank that sits this item out (tp=1 runs on rank 0 alone)
    request.node.stash[MODEL_KEY] = request.getfixturevalue("decode_model")

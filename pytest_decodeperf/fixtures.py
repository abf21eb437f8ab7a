"""The plugin's fixtures, registered beside its hooks (``plugin.py``) as a plugin of their own.

``decode_variant``, ``cache_type`` and ``stream_mode`` describe the item; ``decode_model`` gives its model (override
it in conftest.py to measure your own); ``decode_result`` hands the measured result to the test body. The variant
is measured in the call phase, after every fixture of the item is set up (``_decodeperf_autorun`` sets up the
model first), so a fixture that patches the model is measured too.
"""

from __future__ import annotations

from collections.abc import Iterator
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
def draft_model(request: pytest.FixtureRequest, decode_variant: Variant) -> PreTrainedModel | None:
    """The draft model of an ``hf-assisted`` item (its marker's ``draft=``); override it in conftest.py to give
    your own. None for every other stream mode."""
    if decode_variant.stream != "hf-assisted" or decode_variant.draft in (None, "self"):
        return None  # "self": the item's own model, the runner's to give
    return session(request.config).runner.model(decode_variant.draft, decode_variant.dtype)


@pytest.fixture
def decode_result(_decodeperf_param: tuple[Variant, bool] | None) -> VariantResult | None:
    """The measured result of this item (tokens, metrics, parity verdict), in the test body.

    The variant is measured in the call phase, after every fixture of the item is set up, so a
    fixture that patches the model is measured too; this value is filled in just before the body runs.
    """
    _param_or_fail(_decodeperf_param)
    return None


@pytest.fixture(autouse=True)
def _decodeperf_autorun(
    request: pytest.FixtureRequest, _decodeperf_param: tuple[Variant, bool] | None
) -> Iterator[None]:
    """Set up the model of every marked item, so the call phase can measure it and a test body may be empty; an
    ``hf-assisted`` item's draft too, given to the runner for this item only."""
    dp = session(request.config)
    if _decodeperf_param is None or not dp.settings.enabled:
        yield
        return
    if dp.delegated:
        yield  # under --decodeperf-ab the two workers set up the model, each in its own tree
        return
    variant = _decodeperf_param[0]
    if dp.ranks is not None and not dp.ranks.runs(variant):
        yield  # a rank that sits this item out (tp=1 runs on rank 0 alone)
        return
    request.node.stash[MODEL_KEY] = request.getfixturevalue("decode_model")
    label = variant.draft if variant.stream == "hf-assisted" and variant.draft not in (None, "self") else None
    draft = request.getfixturevalue("draft_model") if label is not None else None
    if label is not None and draft is not None:
        dp.runner.use_draft(label, draft)
    try:
        yield
    finally:
        if label is not None:
            dp.runner.drafts.pop(label, None)  # the runner keeps no item's draft alive past it

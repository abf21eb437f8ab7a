"""What collection does with ``decode_perf`` tests: each test's variant matrix, narrowed by the options.

Called from the plugin's collection hooks (``plugin.py``). The engine's registries (models, caches, stream modes)
are imported only here, and only for a marked test.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from .errors import DecodePerfError
from .marker import parse_marker, variant_id
from .options import Settings, source_of
from .protocol import PARAM, item_param

if TYPE_CHECKING:
    from .engine.spec.variants import Variant
    from .session import DecodePerfSession

MARKER = "decode_perf"


def default_model(settings: Settings) -> str:
    """The checkpoint given, else the zoo's default for the device (the CPU's when the device is unusable)."""
    from .engine.device.machine import resolve_device
    from .engine.spec.models import default_model_name

    if settings.model_path is not None:
        return settings.model_path
    try:
        return default_model_name(resolve_device(settings.device))
    except DecodePerfError:
        return default_model_name("cpu")


def default_prompt_lens(settings: Settings) -> tuple[int, ...]:
    from .engine.device.machine import resolve_device
    from .engine.spec.workload import default_prompt_lens

    try:
        return default_prompt_lens(resolve_device(settings.device))
    except DecodePerfError:
        return default_prompt_lens("cpu")


def parametrize(metafunc: pytest.Metafunc, dp: DecodePerfSession, custom_model: bool) -> None:
    """Parametrize a marked test with its variants (one line at collection for a bad marker)."""
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        return
    settings = dp.settings
    try:
        variants, parity = parse_marker(
            marker.args,
            dict(marker.kwargs),
            default_model(settings),
            custom_model,
            default_prompt_lens(settings),
            settings.prompt_lens,
            settings.dtype,
            settings.tp,
            settings.attn,
        )
        check_kernels(variants, settings, custom_model)
        if settings.enabled:
            from .tp.hooks import select

            variants = select(metafunc.config, dp, variants, custom_model)
    except DecodePerfError as exc:
        raise pytest.Collector.CollectError(f"{metafunc.definition.nodeid}: {exc}") from None
    if settings.new_tokens is not None:
        variants = list(dict.fromkeys(replace(v, new_tokens=settings.new_tokens) for v in variants))
    vary_length = len({v.new_tokens for v in variants}) > 1
    vary_stop = len({v.stop for v in variants}) > 1
    params = [
        pytest.param(
            (v, parity),
            id=variant_id(v, vary_length, vary_stop),
            # a combination the product made that cannot run (hf-serve with another cache than paged, a speculative
            # mode at batch 8): skipped, saying why, rather than dropped or failed
            marks=[pytest.mark.skip(reason=why)] if (why := v.refusal()) is not None else [],
        )
        for v in variants
    ]
    metafunc.parametrize(PARAM, params)


def check_kernels(variants: list[Variant], settings: Settings, custom_model: bool) -> None:
    """An attention kernel the device or a model cannot run, refused at collection (one line); a ``decode_model`` of
    yours is checked when it is built (``engine/spec/checks.py``)."""
    from .engine.device.machine import resolve_device
    from .engine.spec.attention import attn_refusal

    try:
        device = resolve_device(settings.device)
    except DecodePerfError:
        return  # the device itself is reported where the run starts
    for model, attn in dict.fromkeys((v.model, v.attn) for v in variants):
        if (refusal := attn_refusal(None if custom_model else model, attn, device)) is not None:
            raise DecodePerfError(refusal)


def narrowed_out(variant: Variant, settings: Settings) -> bool:
    """Whether ``--decodeperf-models/-caches/-streams/-batch-sizes`` leave ``variant`` out."""
    return bool(
        (settings.models and variant.model not in settings.models)
        or (settings.caches and variant.cache not in settings.caches)
        or (settings.streams and variant.stream not in settings.streams)
        or (settings.batch_sizes and variant.batch_size not in settings.batch_sizes)
    )


def check_model_names(config: pytest.Config, settings: Settings, items: list[pytest.Item]) -> None:
    """A ``--decodeperf-models`` name that is neither in the zoo nor a label of a collected test
    is a typo: say so, rather than deselect everything in silence."""
    if not settings.models:
        return
    from .engine.spec.models import MODELS

    labels = {param[0].model for item in items if (param := item_param(item)) is not None}
    unknown = [m for m in settings.models if m not in MODELS and m not in labels]
    if unknown:
        known = sorted(set(MODELS) | labels)
        raise pytest.UsageError(
            f"pytest-decodeperf: unknown model {', '.join(map(repr, unknown))}: not in the zoo and not a models= label "
            f"of any collected test; choose from: {', '.join(known)} (from {source_of(config, 'models')})"
        )

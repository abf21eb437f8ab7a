"""The attention-kernel axis: which kernels a variant may name, and which ones a model or a device cannot run.

A variant's ``attn`` is transformers' ``attn_implementation`` (``None``: the model's own default, sdpa where the
class supports it). Whether a model can run a kernel is transformers' own answer, asked cheaply at collection: the
model is built on the meta device (no weights, no memory) and switched to the kernel (``models.set_attn``), and
its class's checks (``_supports_sdpa``, ``_supports_flex_attn``) raise for what it cannot run. Whether a device
can: transformers runs ``flex_attention`` through ``torch.compile`` whatever the variant's ``compile=``, so it
needs what inductor compiles with there: a C++ compiler on CPU (it runs in torch 2.13, slowly), Triton on CUDA.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from typing import Any

import torch

from ...errors import DecodePerfError, check_choice
from .models import MODELS, first_line, is_checkpoint, set_attn

# The kernels the axis takes: transformers' three that need no extra package (flash attention needs its own).
ATTN_KERNELS = ("sdpa", "eager", "flex_attention")
# Kernels transformers runs through torch.compile: the sync count is not taken (torch 2.13's dynamo refuses to compile
# under the counter's TorchDispatchMode, and flex_attention's fullgraph compile then raises), as under compile=.
COMPILED_KERNELS = ("flex_attention",)
UNCOUNTED = (
    "syncs not counted: transformers runs flex_attention through torch.compile, which torch 2.13 cannot do under "
    "the counter's dispatch mode"
)


def check_attn(value: object) -> str | None:
    """None (the model's default) or one of ``ATTN_KERNELS``, else one line naming them."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DecodePerfError(f"attn must be None or one of {', '.join(ATTN_KERNELS)}; got {value!r}")
    return check_choice("attention kernel", value, ATTN_KERNELS)


@functools.lru_cache(maxsize=64)
def model_refusal(name: str, attn: str) -> str | None:
    """Why zoo model or checkpoint ``name`` cannot run kernel ``attn`` (None: it can): built on the meta device
    (no weights, no memory), then switched to the kernel, so transformers' own checks answer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    auto: Any = AutoModelForCausalLM  # from_config is untyped
    try:
        with torch.device("meta"):
            if is_checkpoint(name):
                config = AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=False)
                model = auto.from_config(config)
            else:
                model = MODELS[name].build()
    except (ValueError, ImportError, OSError) as exc:  # a config that does not load is the loader's to report
        raise DecodePerfError(f"{name}: its config does not build a causal LM: {first_line(exc)}") from None
    try:
        set_attn(model, attn, name)
    except DecodePerfError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=8)
def device_refusal(attn: str | None, device_type: str) -> str | None:
    """Why a ``device_type`` device cannot run kernel ``attn`` (None: it can): flex_attention is compiled."""
    if attn != "flex_attention":
        return None
    if device_type == "cpu":
        from torch._inductor import config as inductor

        cxx = inductor.cpp.cxx
        names = [os.environ.get("CXX"), *(cxx if isinstance(cxx, (list, tuple)) else (cxx,))]
        if not any(shutil.which(n) for n in names if n):
            return (
                "attn='flex_attention' cannot run on cpu here: transformers compiles flex_attention with "
                "torch.compile, and inductor finds no C++ compiler (g++, or $CXX)"
            )
    elif device_type == "cuda" and importlib.util.find_spec("triton") is None:
        return (
            "attn='flex_attention' cannot run on cuda here: transformers compiles flex_attention with torch.compile, "
            "which needs Triton (not installed)"
        )
    return None


def attn_refusal(name: str | None, attn: str | None, device: torch.device | str) -> str | None:
    """Why ``attn`` cannot run on ``device`` or on model ``name`` (None: the model is the user's own, checked
    when built); None when it can. Cached: asked once per model, kernel and device at collection."""
    if attn is None:
        return None
    refusal = device_refusal(attn, torch.device(device).type)
    if refusal is None and name is not None:
        refusal = model_refusal(name, attn)
    return refusal

"""What the decode loop cannot drive, or cannot trust with a cache, and generate()'s own EOS set aside.

Each refusal is one line naming the model and why; ``spec/checks.py`` turns them into a variant's refusal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import DynamicCache, PreTrainedModel

from .caches import cache_keyword, forward_parameters
from .forward import ForwardCall
from .hidden_syncs import full_causal_mask


def loop_refusal(model: PreTrainedModel) -> str | None:
    """Why the decode loop cannot drive ``model`` (None when it can)."""
    name = type(model).__name__
    if getattr(model.config, "is_encoder_decoder", False):
        return f"{name} is an encoder-decoder: it needs encoder inputs, which the decode loop does not give"
    if cache_keyword(model) is None:
        other = " (it keeps its state in cache_params)" if "cache_params" in forward_parameters(model) else ""
        return (
            f"{name}.forward takes no Cache (neither cache= nor past_key_values=){other}: the decode loop's "
            "caches cannot drive it, and a cache it ignores gives wrong tokens in every stream mode alike"
        )
    return None


def ignored_cache_refusal(model: PreTrainedModel) -> str | None:
    """Why ``model`` cannot be trusted with a cache it takes by name: it ignores it (None when it uses it).

    A forward that accepts a cache and then ignores it (a wrapper that drops it, a state-space model
    fed a KV cache) gives wrong tokens in the loop *and* in generate(), alike, so parity alone
    cannot see it. One cached step must give the logits of the full sequence run without a cache, each
    forward called as the loop and generate() call it (``forward.ForwardCall``: with its positions; a model
    that derives them from ``position_ids`` is wrong without them, and that is not ignoring its cache).
    """
    keyword = cache_keyword(model)
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if keyword is None or vocab < 2:
        return None
    param = next(model.parameters())
    ids = (torch.arange(1, 7, device=param.device) * 7 % vocab)[None]  # [1, 6]
    call = ForwardCall(model, 1, 6, param.device)
    with torch.no_grad():
        full = model(ids, **call.kwargs(0, 6, None)).logits[:, -1].float()  # [1, V]
        if not torch.equal(full, model(ids, **call.kwargs(0, 6, None)).logits[:, -1].float()):
            return None  # not deterministic (dropout on): the parity check judges it
        cache = DynamicCache(config=model.config)
        model(ids[:, :-1], **call.kwargs(0, 5, cache))
        step = model(ids[:, -1:], **call.kwargs(5, 6, cache)).logits[:, -1].float()
    scale = float(full.abs().max())
    if torch.allclose(step, full, rtol=0.0, atol=max(0.02 * scale, 1e-4)):
        return None
    return (
        f"{type(model).__name__} ignores the cache its forward takes ({keyword}=): one cached step gives other "
        "logits than the whole sequence without a cache, so the decode loop and generate() would agree on wrong tokens"
    )


@contextlib.contextmanager
def model_eos_cleared(model: PreTrainedModel) -> Iterator[None]:
    """generate() stops on the model's own EOS when none is passed: clear it for the call."""
    config = getattr(model, "generation_config", None)
    if config is None:
        yield
        return
    saved = config.eos_token_id
    config.eos_token_id = None
    try:
        yield
    finally:
        config.eos_token_id = saved


def windowed_attention(model: torch.nn.Module) -> bool:
    """Sliding or chunked attention: a plain causal mask would be wrong for it."""
    config = model.config
    layer_types = getattr(config, "layer_types", None) or ()
    return bool(
        getattr(config, "sliding_window", None)
        or getattr(config, "attention_chunk_size", None)
        or any(kind != "full_attention" for kind in layer_types)
    )


def accepts_causal_mask(model: torch.nn.Module) -> bool:
    """Whether ``model`` gives the same logits with a ready 4-D causal mask as with none.

    Not every model takes one: ALiBi models (Bloom) build their biases from a 2-D mask, and a plain
    causal mask would be wrong for sliding-window attention. A model that does not stays on its own
    masking path, and its host read shows in the sync count.
    """
    if windowed_attention(model):
        return False
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 2:
        return False
    param = next(model.parameters())
    ids = (torch.arange(5, device=param.device) * 7 % vocab)[None]  # [1, 5]
    dtype = param.dtype if param.is_floating_point() else torch.float32
    kwargs = ForwardCall(model, 1, 5, param.device).kwargs(0, 5, None)  # as every forward is called
    try:
        with torch.no_grad():
            plain = model(ids, **kwargs).logits
            masked = model(ids, **kwargs, attention_mask=full_causal_mask(1, 5, dtype, param.device)).logits
    except (TypeError, ValueError, RuntimeError, IndexError):
        return False
    return bool(torch.allclose(plain.float(), masked.float(), rtol=1e-4, atol=1e-5))

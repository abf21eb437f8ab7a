"""The model zoo: named decoder models built offline from configs, with seeded random init.

No weights are downloaded. Random init with transformers' default ``initializer_range=0.02``
makes greedy decoding collapse to one repeated token; 0.3 gives varied output, which the stop
workload needs (it picks real emitted tokens as EOS). The compute per token is the same as a
trained model of the same shape, which is what a performance test measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from ..errors import DecodePerfError, check_choice

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Random-init models need a wide init so greedy output varies (see module docstring).
INIT_RANGE = 0.3


@dataclass(frozen=True)
class ModelSpec:
    """A named model: how to build it and what it is for."""

    name: str
    description: str
    build: Callable[[], PreTrainedModel]


def _tiny_gpt2() -> PreTrainedModel:
    config = GPT2Config(
        vocab_size=2048,
        n_positions=1024,
        n_embd=128,
        n_layer=4,
        n_head=4,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        initializer_range=INIT_RANGE,
    )
    return GPT2LMHeadModel(config)


def _gpt2() -> PreTrainedModel:
    # GPT-2 small (124M), the article's model; pad == eos == bos as in the hub config.
    config = GPT2Config(initializer_range=INIT_RANGE, pad_token_id=50256)
    return GPT2LMHeadModel(config)


def _tiny_llama_gqa() -> PreTrainedModel:
    # Grouped-query attention: 8 query heads share 2 key/value heads, so the KV cache is
    # 4x smaller than multi-head attention of the same width.
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        initializer_range=INIT_RANGE,
    )
    return LlamaForCausalLM(config)


def _llama_gqa_1b() -> PreTrainedModel:
    # A Llama-3.2-1B-shaped model with GQA (32 query / 8 KV heads): for GPUs.
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        initializer_range=INIT_RANGE,
    )
    return LlamaForCausalLM(config)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("tiny-gpt2", "GPT-2, 4 layers, 128 wide, 2k vocab: fast on CPU", _tiny_gpt2),
        ModelSpec("gpt2", "GPT-2 small (124M), the article's model", _gpt2),
        ModelSpec("tiny-llama-gqa", "Llama, 4 layers, 8 query / 2 KV heads (GQA)", _tiny_llama_gqa),
        ModelSpec("llama-gqa-1b", "Llama-3.2-1B-shaped, 32 query / 8 KV heads (GQA)", _llama_gqa_1b),
    )
}


def default_model_name(device: torch.device | str) -> str:
    """The model a run uses when none is named: the article's GPT-2 on CUDA, a tiny one on CPU."""
    return "gpt2" if torch.device(device).type == "cuda" else "tiny-gpt2"


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES[check_choice("dtype", dtype, DTYPES)]


def build_model(
    name: str,
    device: torch.device | str = "cpu",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
) -> PreTrainedModel:
    """Build model ``name`` with seeded random weights, in eval mode, on ``device``."""
    spec = MODELS[check_choice("model", name, MODELS)]
    torch_dtype = resolve_dtype(dtype)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DecodePerfError("device 'cuda' asked for, but torch.cuda.is_available() is False")
    # Seed a private generator stream so building a model never disturbs the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build()
    # transformers types .to()/.eval() loosely; the model is the same object either way.
    cast(Any, model).to(device=dev, dtype=torch_dtype)
    cast(Any, model).eval()
    return model


def pad_token_id(model: PreTrainedModel) -> int:
    """The id finished rows are padded with: the config's pad, else its eos, else 0."""
    config = model.config
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(config, attr, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return 0


def vocab_size(model: PreTrainedModel) -> int:
    size = getattr(model.config, "vocab_size", None)
    if not isinstance(size, int):
        raise DecodePerfError(f"model config has no integer vocab_size: {type(model.config).__name__}")
    return size

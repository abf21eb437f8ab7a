"""Tiny configs of the architectures shipped in 2026 (transformers 5.24), for the roofline's tests.

Mixture-of-experts (Mixtral, Qwen3-MoE, GPT-OSS, DeepSeek-V3 with shared experts and a dense first layer), latent
attention (DeepSeek-V2/V3), per-layer embeddings and KV sharing (Gemma 4, Gemma 3n), linear attention (Qwen3-Next),
convolution layers (LFM2) and state-space layers (Falcon-H1 hybrid, Jamba). Random init, seeded, float32; a few
hundred kilobytes each. ``state_bytes`` is each stateful family's recurrent state from its config alone (what the
cache must hold per sequence), to check the state read off the cache's tensors against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    DeepseekV2Config,
    DeepseekV3Config,
    FalconH1Config,
    Gemma3nTextConfig,
    Gemma4TextConfig,
    GptOssConfig,
    JambaConfig,
    Lfm2Config,
    MixtralConfig,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen3MoeConfig,
    Qwen3NextConfig,
)

VOCAB = 128
BASE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
    "initializer_range": 0.3,
}
MLA: dict[str, Any] = {"kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8}
GEMMA: dict[str, Any] = {
    **BASE,
    "num_hidden_layers": 4,
    "head_dim": 8,
    "tie_word_embeddings": False,  # random-init Gemma with tied embeddings collapses to one token
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "sliding_window": 4,
    "hidden_size_per_layer_input": 8,
    "num_kv_shared_layers": 2,  # the last two layers reuse the first two's K/V: no cache of their own
}


def mixtral(**over: Any) -> PreTrainedConfig:
    return MixtralConfig(**{**BASE, "num_local_experts": 8, "num_experts_per_tok": 2, **over})


def qwen3_moe(**over: Any) -> PreTrainedConfig:
    return Qwen3MoeConfig(
        **{**BASE, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 8, **over}
    )


def gpt_oss(**over: Any) -> PreTrainedConfig:
    return GptOssConfig(
        **{**BASE, "num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8, "sliding_window": 4, **over}
    )


def deepseek_v3(**over: Any) -> PreTrainedConfig:
    return DeepseekV3Config(
        **{
            **BASE,
            **MLA,
            "num_hidden_layers": 3,
            "num_key_value_heads": 4,
            "v_head_dim": 8,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,  # layer 0 is a dense MLP
            "n_group": 2,
            "topk_group": 1,
            **over,
        }
    )


def deepseek_v2(**over: Any) -> PreTrainedConfig:
    return DeepseekV2Config(
        **{
            **BASE,
            **MLA,
            "num_key_value_heads": 4,
            "v_head_dim": 8,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            **over,
        }
    )


def gemma4(**over: Any) -> PreTrainedConfig:
    return Gemma4TextConfig(**{**GEMMA, "vocab_size_per_layer_input": VOCAB, "global_head_dim": 16, **over})


def gemma3n(**over: Any) -> PreTrainedConfig:
    return Gemma3nTextConfig(
        **{
            **GEMMA,
            "vocab_size_per_layer_input": VOCAB,
            "laurel_rank": 4,
            "altup_num_inputs": 2,
            "activation_sparsity_pattern": [0.0] * 4,
            **over,
        }
    )


def qwen3_next(**over: Any) -> PreTrainedConfig:
    return Qwen3NextConfig(
        **{
            **BASE,
            "num_hidden_layers": 4,  # three linear-attention layers, then full attention
            "head_dim": 8,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 16,
            "linear_num_value_heads": 4,
            "linear_num_key_heads": 2,
            "linear_key_head_dim": 8,
            "linear_value_head_dim": 8,
            **over,
        }
    )


def lfm2(**over: Any) -> PreTrainedConfig:
    return Lfm2Config(**{**BASE, "num_hidden_layers": 3, "layer_types": ["conv", "full_attention", "conv"], **over})


def falcon_h1(**over: Any) -> PreTrainedConfig:
    return FalconH1Config(
        **{
            **BASE,
            "mamba_d_ssm": 32,
            "mamba_n_heads": 4,
            "mamba_d_head": 8,
            "mamba_d_state": 8,
            "mamba_n_groups": 1,
            "mamba_chunk_size": 4,
            **over,
        }
    )


def jamba(**over: Any) -> PreTrainedConfig:
    return JambaConfig(
        **{
            **BASE,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,  # layer 0 Mamba, layer 1 attention
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "mamba_d_state": 8,
            "mamba_dt_rank": 4,
            "use_mamba_kernels": False,
            **over,
        }
    )


FAMILIES: dict[str, Callable[..., PreTrainedConfig]] = {
    "mixtral": mixtral,
    "qwen3-moe": qwen3_moe,
    "gpt-oss": gpt_oss,
    "deepseek-v3": deepseek_v3,
    "deepseek-v2": deepseek_v2,
    "gemma4": gemma4,
    "gemma3n": gemma3n,
    "qwen3-next": qwen3_next,
    "lfm2": lfm2,
    "falcon-h1": falcon_h1,
    "jamba": jamba,
}
MOE = ("mixtral", "qwen3-moe", "gpt-oss", "deepseek-v3", "deepseek-v2", "qwen3-next", "jamba")
LATENT = ("deepseek-v3", "deepseek-v2")
STATEFUL = ("qwen3-next", "lfm2", "falcon-h1", "jamba")
_AUTO: Any = AutoModelForCausalLM  # from_config is untyped
_BUILT: dict[str, PreTrainedModel] = {}


def build(name: str, **over: Any) -> PreTrainedModel:
    """The family's tiny model, seeded (cached when built without overrides)."""
    if over or name not in _BUILT:
        torch.manual_seed(0)
        model = _AUTO.from_config(FAMILIES[name](**over), dtype=torch.float32).eval()
        if over:
            return model  # type: ignore[no-any-return]
        _BUILT[name] = model
    return _BUILT[name]


def state_bytes(config: Any, batch: int, itemsize: int = 4) -> int:
    """The recurrent state a sequence batch holds, from the config alone (per family, as its mixer sizes it)."""
    layers = list(config.layer_types)
    if isinstance(config, Qwen3NextConfig):  # gated delta net: conv over q, k, v; state [v_heads, k_dim, v_dim]
        key_dim = config.linear_num_key_heads * config.linear_key_head_dim
        value_dim = config.linear_num_value_heads * config.linear_value_head_dim
        conv = (2 * key_dim + value_dim) * config.linear_conv_kernel_dim
        rec = config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim
        per_layer, count = conv + rec, layers.count("linear_attention")
    elif isinstance(config, Lfm2Config):  # a short causal conv over the hidden state, no recurrent state
        per_layer, count = config.hidden_size * config.conv_L_cache, layers.count("conv")
    elif isinstance(config, FalconH1Config):  # Mamba-2: conv over x, B, C; state [heads, head_dim, d_state]
        conv = (config.mamba_d_ssm + 2 * config.mamba_n_groups * config.mamba_d_state) * config.mamba_d_conv
        rec = config.mamba_n_heads * config.mamba_d_head * config.mamba_d_state
        per_layer, count = conv + rec, layers.count("hybrid")
    elif isinstance(config, JambaConfig):  # Mamba-1: conv and state over expand x hidden channels
        inner = config.mamba_expand * config.hidden_size
        per_layer, count = inner * config.mamba_d_conv + inner * config.mamba_d_state, layers.count("linear_attention")
    else:
        raise ValueError(f"no state formula for {type(config).__name__}")
    return batch * count * per_layer * itemsize

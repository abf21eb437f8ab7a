"""Parity you can trust, across architectures: every item matches transformers' generate() or is refused.

Twelve causal LMs built from tiny configs (random init, seeded), every engine cache with the
blocking baseline and the pipelined mode, plus generate() itself, at batch 1 and 4, with real EOS
stops and without. Before transformers 5.24 Mamba keeps its state in ``cache_params``: the engine's
caches would feed it a cache it ignores (wrong tokens in every stream mode alike), so the loop
refuses it in one line, while generate() still runs it; from 5.24 it takes the unified cache and
must match generate(). A model that takes a cache and ignores it is refused by a probe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    DynamicCache,
    FalconConfig,
    FalconForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTBigCodeConfig,
    GPTBigCodeForCausalLM,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.decode.caches import cache_keyword
from pytest_decodeperf.errors import DecodePerfError

torch.set_num_threads(1)
IDS: dict[str, Any] = {"vocab_size": 384, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
INIT = {"initializer_range": 0.3}
NEW = 8

BUILDERS: dict[str, Callable[[], PreTrainedModel]] = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **IDS, **INIT)),
    "llama-gqa": lambda: LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **IDS,
            **INIT,
        )
    ),
    "opt": lambda: OPTForCausalLM(
        OPTConfig(
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
            **IDS,
            **INIT,
        )
    ),
    "gpt-neox": lambda: GPTNeoXForCausalLM(
        GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **IDS, **INIT)
    ),
    "mistral-sliding": lambda: MistralForCausalLM(
        MistralConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=6,
            **IDS,
            **INIT,
        )
    ),
    "qwen2": lambda: Qwen2ForCausalLM(
        Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **IDS,
            **INIT,
        )
    ),
    "falcon-mqa": lambda: FalconForCausalLM(
        FalconConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            multi_query=True,
            new_decoder_architecture=False,
            **IDS,
            **INIT,
        )
    ),
    "phi": lambda: PhiForCausalLM(
        PhiConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, **IDS, **INIT)
    ),
    "gemma-untied": lambda: GemmaForCausalLM(
        GemmaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            tie_word_embeddings=False,
            **IDS,
            **INIT,
        )
    ),
    "gpt-j": lambda: GPTJForCausalLM(
        GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, **IDS, **INIT)
    ),
    "bloom-untied": lambda: BloomForCausalLM(
        BloomConfig(hidden_size=32, n_layer=2, n_head=2, tie_word_embeddings=False, **IDS, **INIT)
    ),
    "gpt-bigcode-mqa": lambda: GPTBigCodeForCausalLM(
        GPTBigCodeConfig(n_embd=32, n_layer=2, n_head=2, n_positions=64, multi_query=True, **IDS, **INIT)
    ),
}


# At 32 wide, GPT-J and Phi collapse a row onto one token (the harness refuses that reference): 64 wide.


def build(name: str, builder: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = builder()
    model.eval()
    return model


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner("cpu", rounds=1, warmup=0)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_cache_and_mode_matches_transformers_generate(runner: Runner, name: str) -> None:
    model = build(name, BUILDERS[name])
    failures = []
    for stop in ("eos", "none"):
        for batch in (1, 4):
            for cache in ("none", "dynamic", "static"):
                modes = ("baseline", "deferred", "pipelined", "nostop", *(("hf-generate",) if cache != "none" else ()))
                for stream in modes:
                    variant = Variant(name, cache, stream, batch, NEW, stop=stop)
                    result = runner.run(variant, model)
                    if result.parity is None or not result.parity.ok:
                        failures.append(str(result.parity))
                    elif stop == "eos":
                        assert result.output.new_tokens < NEW or batch > 1, f"{variant.id}: no row stopped"
    assert failures == []


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "mistral-sliding"])
def test_left_padded_mixed_prompts_match_generate_with_the_same_mask(runner: Runner, name: str) -> None:
    """Rows of 16, 12, 8 and 4 prompt tokens, left padded: generate() gets the same ids and mask.

    The sliding window (6) is shorter than the rows, so it engages; GPT-2 (learned absolute positions)
    shows wrong position ids, Llama (rotary) wrong masks. GPT-2 and Llama take a ready 4-D mask: no
    hidden read in a step; the sliding-window model keeps transformers' 2-D path.
    """
    model = build(name, BUILDERS[name])
    failures = []
    for cache in ("none", "dynamic", "static"):
        for stream in ("baseline", "pipelined", "deferred", "nostop", *(("hf-generate",) if cache != "none" else ())):
            variant = Variant(name, cache, stream, 4, NEW, prompt_len=16, prompts="mixed")
            result = runner.run(variant, model)
            assert result.workload.prompt_lengths == (16, 12, 8, 4)
            if result.parity is None or not result.parity.ok:
                failures.append(str(result.parity))
            if name != "mistral-sliding" and not variant.is_hf:
                assert result.syncs is not None and result.syncs.max_hidden == 0, result.syncs
    assert failures == []


def mamba() -> PreTrainedModel:
    return build("mamba", lambda: MambaForCausalLM(MambaConfig(hidden_size=32, num_hidden_layers=2, **IDS, **INIT)))


@pytest.mark.parametrize("cache", ["none", "dynamic", "static"])
def test_a_state_space_model_is_never_passed_with_wrong_tokens(runner: Runner, cache: str) -> None:
    """transformers < 5.24: Mamba keeps its state in ``cache_params`` and the loop refuses it in one line.

    From 5.24 its forward takes the unified ``cache=`` (linear-attention layers in the same Cache
    classes): the loop drives it, and every item must then match generate().
    """
    model = mamba()
    if cache_keyword(model) is None:
        with pytest.raises(DecodePerfError) as caught:
            runner.run(Variant("mamba", cache, "pipelined", 2, NEW), model)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"mamba-{cache}-pipelined-b2: MambaForCausalLM.forward takes no Cache")
        assert "hf-generate" in message
        return
    for stream in ("baseline", "pipelined"):
        result = runner.run(Variant("mamba", cache, stream, 2, NEW), model)
        assert result.parity is not None and result.parity.ok, str(result.parity)
        assert result.parity.reference == "transformers generate()"


class ForgetfulGPT2(GPT2LMHeadModel):
    """Takes a cache by name and drops it: every step sees only the newest token."""

    def forward(self, input_ids: Any = None, cache: Any = None, past_key_values: Any = None, **kwargs: Any) -> Any:
        return super().forward(input_ids, **kwargs)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_model_that_ignores_its_cache_is_refused_though_generate_agrees_with_it(runner: Runner, cache: str) -> None:
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **IDS, **INIT)
    model = build("forgetful", lambda: ForgetfulGPT2(config))
    with pytest.raises(DecodePerfError) as caught:
        runner.run(Variant("forgetful", cache, "baseline", 2, NEW), model)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"forgetful-{cache}-baseline-b2: ForgetfulGPT2 ignores the cache its forward takes")
    # the trap it closes: generate() is as wrong as the loop, so parity alone would pass
    result = runner.run(Variant("forgetful", "dynamic", "hf-generate", 2, NEW), model)
    assert result.parity is not None and result.parity.ok
    assert runner.run(Variant("forgetful", "none", "baseline", 2, NEW), model).parity is not None


def test_generate_still_runs_a_state_space_model_and_matches_itself(runner: Runner) -> None:
    result = runner.run(Variant("mamba", "dynamic", "hf-generate", 2, NEW), mamba())
    assert result.parity is not None and result.parity.ok, str(result.parity)


def bamba() -> PreTrainedModel:
    """A Mamba-2/attention hybrid whose forward derives its positions from ``position_ids``."""
    from transformers import BambaConfig, BambaForCausalLM

    config = BambaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_indices=[1],
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_d_state=8,
        mamba_n_groups=1,
        mamba_chunk_size=16,
        **IDS,
        **INIT,
    )
    return build("bamba", lambda: BambaForCausalLM(config))


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_model_that_needs_its_position_ids_is_called_as_generate_calls_it_and_not_refused(
    runner: Runner, cache: str
) -> None:
    """Called without ``position_ids``, Bamba's cached step gives other logits than the full sequence (max abs diff
    ~2 here), so a probe that left them out refused it as ignoring its cache, though generate() (which passes them)
    matches the uncached run. The probe, the loop and generate() now call every forward one way."""
    model = bamba()
    ids = (torch.arange(1, 7) * 7 % 384)[None]
    with torch.no_grad():  # the trap: without positions the cached step is wrong
        full = model(ids, use_cache=False).logits[:, -1]
        kv = DynamicCache(config=model.config)
        model(ids[:, :-1], use_cache=True, **{cache_keyword(model) or "past_key_values": kv})
        bare = model(ids[:, -1:], use_cache=True, **{cache_keyword(model) or "past_key_values": kv}).logits[:, -1]
    assert float((full - bare).abs().max()) > 0.1
    for stream in ("baseline", "pipelined"):
        result = runner.run(Variant("bamba", cache, stream, 2, NEW), model)
        assert result.parity is not None and result.parity.ok, str(result.parity)
        assert result.parity.reference == "transformers generate()"

"""The model zoo: offline, seeded, the shapes it promises."""

from __future__ import annotations

import pytest
import torch

from pytest_decodeperf import DecodePerfError, build_model
from pytest_decodeperf.engine.spec.models import MODELS, default_model_name, pad_token_id


def test_the_same_seed_builds_the_same_weights_and_another_seed_different_ones() -> None:
    a, b, c = build_model("tiny-gpt2", seed=0), build_model("tiny-gpt2", seed=0), build_model("tiny-gpt2", seed=1)
    wa, wb, wc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_building_a_model_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("tiny-gpt2")
    assert torch.equal(torch.rand(3), expected)


def test_the_gqa_model_shares_key_value_heads() -> None:
    model = build_model("tiny-llama-gqa")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    k_proj = model.model.layers[0].self_attn.k_proj
    q_proj = model.model.layers[0].self_attn.q_proj
    assert k_proj.out_features * 4 == q_proj.out_features


def test_models_are_built_in_eval_mode_in_the_asked_dtype() -> None:
    model = build_model("tiny-gpt2", dtype="bfloat16")
    assert not model.training
    assert next(model.parameters()).dtype == torch.bfloat16


def test_tiny_configs_keep_special_tokens_inside_the_vocabulary() -> None:
    for name in ("tiny-gpt2", "tiny-llama-gqa"):
        model = build_model(name)
        assert 0 <= pad_token_id(model) < model.config.vocab_size


def test_gpt2_small_has_the_seed_articles_shape() -> None:
    config = MODELS["gpt2"].build().config  # building is ~3 s; only the config is checked
    assert (config.n_layer, config.n_embd, config.n_head, config.vocab_size) == (12, 768, 12, 50257)


def test_the_default_model_depends_on_the_device() -> None:
    assert default_model_name("cpu") == "tiny-gpt2"
    assert default_model_name("cuda") == "gpt2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "gpt5"}, "unknown model 'gpt5'; choose from: gpt2, llama-gqa-1b, tiny-gpt2, tiny-llama-gqa"),
        ({"name": "tiny-gpt2", "dtype": "float8"}, "unknown dtype 'float8'"),
    ],
)
def test_bad_model_input_names_the_value_and_the_choices(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(DecodePerfError, match=message.replace("(", r"\(")):
        build_model(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_cuda_is_one_clear_error() -> None:
    with pytest.raises(DecodePerfError, match="torch.cuda.is_available"):
        build_model("tiny-gpt2", device="cuda")

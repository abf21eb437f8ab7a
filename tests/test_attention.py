"""The attention-kernel axis: ``attn=`` names transformers' ``attn_implementation`` per variant.

What a model or a device cannot run is one line naming the class and why; each kernel gets its own model object and
its own baseline, and in float32 on the CPU sdpa and eager give the same tokens (the tie rule, docs/explanation/
parity.md). flex_attention is compiled by transformers (a minute of inductor on the CPU): its paths are measured
in docs/how-to/attention.md, not here.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from test_asv_history import DECODE, make_record

from pytest_decodeperf import Runner, Variant, build_model
from pytest_decodeperf.collection import check_kernels
from pytest_decodeperf.engine.spec import attention
from pytest_decodeperf.engine.spec.attention import attn_refusal, check_attn
from pytest_decodeperf.engine.spec.variants import matrix
from pytest_decodeperf.errors import DecodePerfError
from pytest_decodeperf.history.schema import plan
from pytest_decodeperf.marker import parse_marker
from pytest_decodeperf.report import render_table

torch.set_num_threads(1)


def test_a_named_kernel_shows_in_the_id_and_the_key_and_the_default_changes_nothing() -> None:
    plain = Variant("tiny-gpt2", cache="static")
    eager = Variant("tiny-gpt2", cache="static", attn="eager")
    assert (plain.id, eager.id) == ("tiny-gpt2-static-baseline-b1", "tiny-gpt2-static-baseline-b1-eager")
    assert plain.config_key != eager.config_key and eager.baseline().attn == "eager"
    both = matrix(["tiny-gpt2"], ["dynamic"], ["baseline", "pipelined"], [1], [8], attns=["sdpa", "eager"])
    assert [v.id for v in both] == [
        "tiny-gpt2-dynamic-baseline-b1-sdpa",
        "tiny-gpt2-dynamic-pipelined-b1-sdpa",
        "tiny-gpt2-dynamic-baseline-b1-eager",
        "tiny-gpt2-dynamic-pipelined-b1-eager",
    ]
    variants, _ = parse_marker((), {"attn": "eager"}, "tiny-gpt2", False, attn=("sdpa", "eager"))
    assert [v.attn for v in variants] == ["sdpa", "sdpa", "eager", "eager"]  # the option overrides the marker
    with pytest.raises(DecodePerfError, match=r"^unknown attention kernel 'flash'; choose from: eager, flex_attention"):
        check_attn("flash")


def test_a_kernel_the_model_or_the_device_cannot_run_is_one_line_naming_why(monkeypatch: pytest.MonkeyPatch) -> None:
    refusal = attn_refusal("tiny-gpt2", "flex_attention", "cpu")
    assert refusal is not None and "\n" not in refusal
    assert refusal.startswith("tiny-gpt2: attn='flex_attention': GPT2LMHeadModel does not support")
    assert attn_refusal("tiny-llama-gqa", "flex_attention", "cpu") is None  # Llama's class supports it
    assert attn_refusal("tiny-gpt2", "eager", "cpu") is None and attn_refusal(None, None, "cpu") is None
    with pytest.raises(DecodePerfError, match="GPT2LMHeadModel does not support .* flex_attention"):
        build_model("tiny-gpt2", attn="flex_attention")
    attention.device_refusal.cache_clear()
    monkeypatch.setattr(attention.shutil, "which", lambda name: None)  # a machine without a C++ compiler
    try:
        why = attn_refusal(None, "flex_attention", "cpu")  # a decode_model of yours: only the device is checked
        assert why is not None and "no C++ compiler" in why
    finally:
        attention.device_refusal.cache_clear()


def test_sdpa_and_eager_give_identical_tokens_in_float32_on_cpu() -> None:
    """Each kernel is its own model object, held to its own baseline and to generate() on that object."""
    runner = Runner("cpu", rounds=1, warmup=0)
    tokens = {}
    for attn in ("sdpa", "eager"):
        for stream in ("baseline", "pipelined", "hf-generate"):
            variant = Variant("tiny-llama-gqa", cache="static", stream=stream, batch_size=2, new_tokens=8, attn=attn)
            result = runner.run(variant)
            assert result.parity_verdict == "pass" and result.record()["attn"] == attn
            tokens[variant.id] = result.output.generated
    assert runner.model("tiny-llama-gqa", attn="eager").config._attn_implementation == "eager"
    first = next(iter(tokens.values()))
    assert all(torch.equal(first, t) for t in tokens.values()), tokens


def test_a_decode_model_that_ignores_decode_variant_attn_is_refused() -> None:
    runner = Runner("cpu", rounds=1, warmup=0)
    variant = Variant("mine", stream="baseline", new_tokens=4, attn="eager")
    with pytest.raises(DecodePerfError) as info:
        runner.run(variant, model=build_model("tiny-gpt2"))  # built without the variant's kernel: sdpa
    assert str(info.value).startswith(
        "mine-dynamic-baseline-b1-eager: the model runs attention with 'sdpa', but the variant says attn='eager'"
    )


def test_the_table_and_the_history_tell_kernels_apart_and_old_records_mean_the_default() -> None:
    old = make_record()  # as records were before the axis: no attn field
    eager = make_record(ms=3.0)
    eager.update(attn="eager", test=eager["test"].replace("]", "-eager]"))
    assert "attn" not in old
    table = render_table([old, eager])
    assert "tiny-gpt2 attn=eager" in table and table.count("1.000x") == 2  # each its own group's baseline
    before, _ = plan([old], {})
    assert "attn" not in before[DECODE].entry["param_names"] and before[DECODE].constants["attn"] == "None"
    after, _ = plan([eager], {DECODE: [before[DECODE]]})
    entry = after[DECODE].entry
    assert entry["param_names"][-1] == "attn" and entry["params"][-1] == ["None", "'eager'"]


def test_collection_refuses_a_kernel_the_model_cannot_run_in_one_line() -> None:
    settings: Any = SimpleNamespace(device="cpu")  # the one setting the check reads
    variants, _ = parse_marker((), {"attn": ("eager", "flex_attention")}, "tiny-gpt2", False)
    with pytest.raises(DecodePerfError, match=r"^tiny-gpt2: attn='flex_attention': GPT2LMHeadModel does not"):
        check_kernels(variants, settings, custom_model=False)
    check_kernels(variants, settings, custom_model=True)  # a decode_model of yours is checked when it is built

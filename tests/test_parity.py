"""Parity: every stream mode returns exactly the baseline's tokens, on every cache, batch 1..32."""

from __future__ import annotations

import pytest
import torch
from engine_fixtures import tiny_gqa, tiny_model  # noqa: F401
from transformers import PreTrainedModel

from pytest_decodeperf import check_parity, generate, make_workload
from pytest_decodeperf.engine.decode.caches import CacheSlot, get_cache
from pytest_decodeperf.engine.decode.hf_generate import hf_generate
from pytest_decodeperf.engine.decode.stream_modes import get_stop_policy

LAGGED = ("deferred", "pipelined", "nostop")


def _generate(model: PreTrainedModel, w, cache: str, stream: str):  # type: ignore[no-untyped-def]
    slot = CacheSlot(get_cache(cache), model, w.batch_size, w.prompts.shape[1] + w.max_new_tokens)
    with torch.inference_mode():
        return generate(model, w, slot, get_stop_policy(stream))


@pytest.mark.parametrize("stop", ["eos", "none"])
@pytest.mark.parametrize("cache", ["none", "dynamic", "static"])
def test_every_stream_mode_matches_baseline_for_batch_sizes_1_to_32(
    tiny_model: PreTrainedModel, cache: str, stop: str
) -> None:
    stopped_early = 0
    for batch in range(1, 33):
        w = make_workload(tiny_model, batch, 12, stop, seed=batch)
        base = _generate(tiny_model, w, cache, "baseline")
        stopped_early += base.new_tokens < 12
        for stream in LAGGED:
            out = _generate(tiny_model, w, cache, stream)
            report = check_parity(base.generated, out.generated, w.eos_ids, f"{cache}-{stream}-b{batch}")
            assert report.ok, str(report)
    if stop == "eos":
        assert stopped_early == 32  # every batch really stopped before the limit
    else:
        assert stopped_early == 0


@pytest.mark.parametrize("cache", ["none", "dynamic", "static"])
def test_parity_holds_on_the_gqa_model(tiny_gqa: PreTrainedModel, cache: str) -> None:
    w = make_workload(tiny_gqa, 8, 24)
    base = _generate(tiny_gqa, w, cache, "baseline")
    assert base.new_tokens < 24
    for stream in LAGGED:
        assert check_parity(base.generated, _generate(tiny_gqa, w, cache, stream).generated, w.eos_ids).ok


def test_all_cache_types_give_the_same_tokens(tiny_model: PreTrainedModel) -> None:
    w = make_workload(tiny_model, 5, 24)
    dynamic = _generate(tiny_model, w, "dynamic", "baseline").generated
    for cache in ("none", "static"):
        assert check_parity(dynamic, _generate(tiny_model, w, cache, "baseline").generated, w.eos_ids).ok


@pytest.mark.parametrize("cache", ["none", "dynamic", "static"])
@pytest.mark.parametrize("stop", ["eos", "none"])
def test_transformers_generate_matches_the_engines_baseline(tiny_model: PreTrainedModel, cache: str, stop: str) -> None:
    w = make_workload(tiny_model, 6, 20, stop)
    base = _generate(tiny_model, w, cache, "baseline")
    with torch.inference_mode():
        hf = hf_generate(tiny_model, w, cache)
    report = check_parity(base.generated, hf.generated, w.eos_ids, f"hf-generate-{cache}")
    assert report.ok, str(report)
    assert hf.steps == base.steps


def test_the_divergence_report_names_row_position_tokens_and_lengths() -> None:
    expected = torch.tensor([[5, 6, 7, 9], [5, 6, 9, 1]])
    actual = torch.tensor([[5, 6, 7, 9], [5, 8, 9, 1]])
    report = check_parity(expected, actual, [9], "tiny-gpt2-dynamic-pipelined-b2")
    assert not report.ok
    (div,) = report.divergences
    assert (div.row, div.position, div.expected, div.actual) == (1, 1, 6, 8)
    assert (div.expected_length, div.actual_length) == (3, 3)
    assert "row 1: first divergence at generated position 1: expected 6, got 8" in str(report)


def test_a_result_one_step_short_reads_as_an_off_by_one() -> None:
    expected = torch.tensor([[5, 6, 7, 9]])
    actual = torch.tensor([[5, 6, 7]])
    report = check_parity(expected, actual, [9])
    assert "position 3: expected 9, got <end> (lengths: expected 4, got 3)" in str(report)
    assert report.actual_shape == (1, 3)

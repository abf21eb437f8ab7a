"""The decode loop: stops at known steps, trims a lagged policy's extra step, pads finished rows."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from engine_fixtures import tiny_model  # noqa: F401
from transformers import DynamicCache, PreTrainedModel

from pytest_decodeperf import DecodePerfError, check_parity, generate, make_workload
from pytest_decodeperf.engine.decode.caches import CACHES, CacheSlot, CacheStrategy, get_cache, register_cache
from pytest_decodeperf.engine.decode.stream_modes import StopPolicy, get_stop_policy
from pytest_decodeperf.engine.parity.compare import row_lengths
from pytest_decodeperf.engine.spec.workload import Workload, target_steps


def run(model: PreTrainedModel, w: Workload, cache: str, stream: str, max_len: int | None = None):  # type: ignore[no-untyped-def]
    slot = CacheSlot(get_cache(cache), model, w.batch_size, max_len or w.prompts.shape[1] + w.max_new_tokens)
    with torch.inference_mode():
        return generate(model, w, slot, get_stop_policy(stream))


def test_rows_finish_at_different_known_steps(tiny_model: PreTrainedModel) -> None:
    w = make_workload(tiny_model, batch_size=6, max_new_tokens=32)
    assert len(set(w.expected_lengths)) > 1, w.expected_lengths
    assert max(w.expected_lengths) < 32  # a real stop, before the limit
    out = run(tiny_model, w, "dynamic", "baseline")
    assert row_lengths(out.generated, w.eos_ids) == w.expected_lengths
    assert out.new_tokens == w.expected_steps
    assert out.steps == w.expected_steps and out.extra_steps == 0


def test_finished_rows_are_padded_after_their_eos(tiny_model: PreTrainedModel) -> None:
    w = make_workload(tiny_model, batch_size=6, max_new_tokens=32)
    out = run(tiny_model, w, "dynamic", "baseline")
    for row, length in enumerate(w.expected_lengths):
        tail = out.generated[row, length:]
        assert bool((tail == w.pad_id).all()), (row, tail)
        assert int(out.generated[row, length - 1]) in w.eos_ids.tolist()


@pytest.mark.parametrize("stream", ["deferred", "pipelined"])
def test_a_lagged_policy_runs_one_extra_step_and_trims_it(tiny_model: PreTrainedModel, stream: str) -> None:
    w = make_workload(tiny_model, batch_size=4, max_new_tokens=32)
    out = run(tiny_model, w, "dynamic", stream)
    assert out.steps == w.expected_steps + 1
    assert out.extra_steps == 1
    assert out.new_tokens == w.expected_steps
    assert "without CUDA streams" in out.note


def test_nostop_runs_every_step_and_reports_the_run_on(tiny_model: PreTrainedModel) -> None:
    w = make_workload(tiny_model, batch_size=4, max_new_tokens=32)
    out = run(tiny_model, w, "dynamic", "nostop")
    assert out.steps == 32
    assert out.host_reads == 0
    assert out.extra_steps == 32 - w.expected_steps


def test_stop_none_runs_to_max_tokens_with_a_check_every_step(tiny_model: PreTrainedModel) -> None:
    w = make_workload(tiny_model, batch_size=3, max_new_tokens=16, stop="none")
    out = run(tiny_model, w, "static", "baseline")
    assert out.new_tokens == 16 and out.steps == 16 and out.host_reads == 16


def test_stop_targets_spread_over_the_middle_half() -> None:
    assert target_steps(5, 64) == [16, 24, 32, 39, 47]
    assert target_steps(1, 64) == [47]


def test_a_static_cache_shorter_than_prompt_plus_tokens_is_refused(tiny_model: PreTrainedModel) -> None:
    w = make_workload(tiny_model, batch_size=2, max_new_tokens=16)
    with pytest.raises(DecodePerfError, match="static cache holds 10 positions but prompt \\+ new tokens need 20"):
        run(tiny_model, w, "static", "baseline", max_len=10)


def test_a_stream_mode_on_an_unsupported_device_is_refused() -> None:
    with pytest.raises(DecodePerfError, match="'pipelined' cannot run on device 'meta'"):
        get_stop_policy("pipelined").start(torch.device("meta"))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: get_cache("quantized"), "unknown cache type 'quantized'; choose from: dynamic, none, paged, static"),
        (lambda: get_stop_policy("turbo"), "unknown stream mode 'turbo'"),
        (lambda: get_stop_policy("hf-generate"), "run by transformers' generate"),
    ],
)
def test_unknown_names_are_one_clear_error(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DecodePerfError, match=message):
        call()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch size must be an integer >= 1, got 0"),
        ({"max_new_tokens": 0}, "new tokens must be an integer >= 1, got 0"),
        ({"stop": "never"}, "unknown stop workload 'never'"),
    ],
)
def test_bad_workload_sizes_name_the_value(
    tiny_model: PreTrainedModel, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"batch_size": 2, "max_new_tokens": 8, **kwargs}
    with pytest.raises(DecodePerfError, match=message):
        make_workload(tiny_model, **args)  # type: ignore[arg-type]


def test_a_new_cache_type_is_a_few_lines(tiny_model: PreTrainedModel) -> None:
    made: list[int] = []

    def make(model: PreTrainedModel, batch: int, max_len: int) -> DynamicCache:
        made.append(batch)
        return DynamicCache(config=model.config)

    register_cache(CacheStrategy("counting", make))
    try:
        w = make_workload(tiny_model, batch_size=3, max_new_tokens=16)
        out = run(tiny_model, w, "counting", "pipelined")
        assert made == [3]
        assert torch.equal(out.tokens, run(tiny_model, w, "dynamic", "baseline").tokens)
    finally:
        del CACHES["counting"]


def test_a_broken_lagged_policy_trims_the_wrong_step(tiny_model: PreTrainedModel) -> None:
    """A policy that reads the flag of the wrong step returns tokens that differ from baseline."""

    class ReadsTwoBack(StopPolicy):
        def read_slot(self, step: int) -> int:
            return step - 2

    w = make_workload(tiny_model, batch_size=4, max_new_tokens=32)
    slot = CacheSlot(get_cache("dynamic"), tiny_model, 4, 36)
    with torch.inference_mode():
        out = generate(tiny_model, replace(w, max_new_tokens=32), slot, ReadsTwoBack("broken", 1, 1, "test double"))
    # It reads the flag of the step it just launched, believes it one step old, and cuts too early.
    assert out.new_tokens < w.expected_steps
    report = check_parity(run(tiny_model, w, "dynamic", "baseline").generated, out.generated, w.eos_ids, "broken")
    assert not report.ok
    assert "got <end>" in str(report)

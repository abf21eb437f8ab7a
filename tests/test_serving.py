"""Continuous batching under the gate (``engine/decode/serve.py``): transformers' ``generate_batch`` serving the rows
of a workload as requests, some at once, each held to what generate() gives it alone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pytest_decodeperf import DecodePerfError, Runner, Variant
from pytest_decodeperf.engine.decode import generation
from pytest_decodeperf.history.schema import METRIC_BY_NAME

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner("cpu", rounds=2, warmup=0)


def test_requests_of_mixed_lengths_join_and_leave_the_batch_and_each_gets_its_own_tokens(runner: Runner) -> None:
    """Six left-padded prompts of 12 down to 3 tokens, rows stopping at different steps, two running at once."""
    variant = Variant("tiny-llama-gqa", "paged", "hf-serve", 6, 20, prompt_len=12, prompts="mixed", concurrency=2)
    result = runner.run(variant)
    assert result.parity is not None and result.parity.ok, str(result.parity)
    assert result.parity.reference == "transformers generate() for each request alone"
    serving = result.output.serving
    assert serving is not None and serving.requests == 6 and serving.concurrency == 2
    assert max(serving.occupancy) == 2 and min(serving.occupancy) >= 1 and len(serving.occupancy) == result.output.steps
    assert len(serving.ttft_ms) == 6 and all(t > 0 for t in serving.ttft_ms)
    rec = result.record()
    assert rec["requests"] == 6 and rec["concurrency"] == 2 and rec["throughput_tokens_per_s"] > 0
    assert rec["tpot_p50_ms"] <= rec["tpot_p99_ms"] and rec["request_ttft_p50_ms"] <= rec["request_ttft_p99_ms"]
    assert rec["kv_blocks"] > 0 and rec["kv_block_tokens"] == 16
    assert len(rec["samples_tpot_ms"]) == len(rec["samples_s"]) == 2
    assert rec["syncs_per_step"] is None and "syncs not counted: continuous batching" in rec["note"]
    assert rec["paired_with"] == "hf-generate" and variant.id == "tiny-llama-gqa-paged-hf-serve-b6-p12mixed-c2"


def test_a_request_served_other_tokens_than_alone_fails_parity_naming_it(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = generation.ServeGeneration.run

    def changed(self: generation.ServeGeneration, call: generation.Call) -> generation.DecodeOutput:
        out = real(self, call)
        tokens = out.tokens.clone()
        tokens[3, out.prompt_len + 1] = (tokens[3, out.prompt_len + 1] + 1) % 2048
        return replace(out, tokens=tokens)

    monkeypatch.setattr(generation.ServeGeneration, "run", changed)
    result = Runner("cpu", rounds=1, warmup=0).run(Variant("tiny-gpt2", "paged", "hf-serve", 4, 12, concurrency=2))
    assert result.parity is not None and not result.parity.ok
    assert "row 3: first divergence at generated position 1" in str(result.parity)


@pytest.mark.parametrize(
    "variant", [Variant("tiny-gpt2", "dynamic", "hf-serve", 4, 8), Variant("tiny-gpt2", "paged", "baseline", 4, 8)]
)
def test_the_paged_cache_and_continuous_batching_go_together_or_are_refused_in_one_line(variant: Variant) -> None:
    with pytest.raises(DecodePerfError, match="cache='paged' goes with stream='hf-serve'") as caught:
        variant.validate("cpu")
    assert "\n" not in str(caught.value)


def test_tpot_and_request_ttft_are_lower_is_better_history_metrics() -> None:
    for name, field in (("time_tpot", "samples_tpot_ms"), ("time_request_ttft", "samples_request_ttft_ms")):
        metric = METRIC_BY_NAME[name]
        assert metric.type == "time" and metric.gate and metric.field == field
        assert metric.samples({field: [2.0, 3.0]}) == [0.002, 0.003]  # type: ignore[arg-type]


def test_an_ab_side_times_a_servings_tpot_and_ttft_and_history_keeps_them(runner: Runner) -> None:
    """What the A/B judges (PairedRounds' metrics) and what history files (asv points) for a serving variant."""
    from pytest_decodeperf.engine.paired import PairedRounds
    from pytest_decodeperf.history.schema import plan

    variant = Variant("tiny-gpt2", "paged", "hf-serve", 4, 12, concurrency=2)
    model = runner.model("tiny-gpt2")
    rounds = PairedRounds(runner, model, variant)
    try:
        rounds.warm()
        metrics = rounds.round()
    finally:
        rounds.close()
    assert {"ms_per_token", "tpot_ms", "request_ttft_ms"} <= set(metrics) and metrics["tpot_ms"] > 0
    record = runner.run(variant).record("test_serve.py::test_serve[x]")
    _, points = plan([record], {})
    assert {"time_tpot", "time_request_ttft"} <= {p.benchmark.rsplit(".", 1)[-1] for p in points}

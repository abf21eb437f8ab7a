"""The article's matrix on the device's default model (tiny-gpt2 on CPU, GPT-2 small on CUDA).

Run with ``pytest perf_tests --decodeperf``; narrow with ``--decodeperf-caches`` etc.
"""

from __future__ import annotations

import pytest

from pytest_decodeperf import VariantResult

STREAMS = ("baseline", "deferred", "pipelined", "nostop")


@pytest.mark.decode_perf(cache=("none", "dynamic", "static"), stream=STREAMS, batch_size=(1, 8, 32), new_tokens=64)
def test_cache_by_stream_mode(decode_result: VariantResult) -> None:
    """Naive / dynamic / static cache x the four stream modes, with real EOS stops."""
    out = decode_result.output
    assert 0 < out.new_tokens <= 64
    if decode_result.variant.stream in ("deferred", "pipelined") and out.new_tokens < 64:
        assert out.extra_steps == 1  # the lagged look-ahead step is counted, and trimmed


@pytest.mark.decode_perf(
    cache=("dynamic", "static"), stream=("baseline", "pipelined", "nostop"), batch_size=1, new_tokens=64, stop="none"
)
def test_stream_overhead_without_stops(decode_result: VariantResult) -> None:
    """Pipelined vs no stop check at all, every row running to the limit: the streams' own cost."""
    assert decode_result.output.new_tokens == 64


@pytest.mark.decode_perf(cache="static", stream=("baseline", "pipelined"), batch_size=1, new_tokens=64, compile=True)
def test_compiled_static_cache(decode_result: VariantResult) -> None:
    """torch.compile on the static cache; the compile round is reported apart (warmup_s)."""
    assert decode_result.measurement.warmup_s, "the compile round must be kept apart from the timed rounds"


@pytest.mark.decode_perf(
    cache=("dynamic", "static"), stream=("baseline", "hf-generate"), batch_size=(1, 8), new_tokens=64
)
def test_transformers_generate_against_the_engine(decode_result: VariantResult) -> None:
    """transformers' generate() measured the same way; every variant is held to generate()'s tokens."""


@pytest.mark.decode_perf(
    cache=("dynamic", "static"),
    stream=("baseline", "pipelined", "hf-generate"),
    batch_size=8,
    new_tokens=64,
    prompt_lens=(16, "mixed"),
)
def test_left_padded_batches_of_mixed_prompt_lengths(decode_result: VariantResult) -> None:
    """Serving's shape: rows of 16 down to 4 prompt tokens, left padded, with the mask generate() gets;
    beside full rows of 16, so the table's prefill note shows what padding costs."""
    lengths, longest = decode_result.workload.prompt_lengths, decode_result.variant.prompt_len
    if decode_result.variant.prompts == "mixed":
        assert max(lengths) == longest and len(set(lengths)) > 1
    else:
        assert set(lengths) == {longest}


@pytest.mark.decode_perf(
    models="tiny-llama-gqa", cache="dynamic", stream=("baseline", "pipelined"), batch_size=1, new_tokens=32, tp=1
)
def test_tensor_parallel(decode_result: VariantResult) -> None:
    """A model transformers can shard (Llama, GQA), at tp=1 here: ``--decodeperf-tp=1,2`` adds its tp=2 rows, the
    ranks started by the plugin (or run under torchrun); the collectives per step and the world size show there."""
    record = decode_result.record()
    assert record["tp"] == decode_result.variant.tp
    if record["tp"] > 1:
        assert record["collectives_per_step"] and record["world_size"] >= record["tp"]


@pytest.mark.decode_perf(
    cache="dynamic",
    stream=("hf-generate", "hf-prompt-lookup", "hf-assisted"),
    batch_size=1,
    new_tokens=32,
    draft="self",
)
def test_speculative_decoding(decode_result: VariantResult) -> None:
    """generate()'s prompt lookup and a draft model (here the model as its own draft: every proposal it makes the
    verifier keeps, the most a draft can save, against what a second model costs); each against plain generate()."""
    record = decode_result.record()
    if decode_result.variant.stream != "hf-generate":
        assert record["verify_steps"] == decode_result.output.steps and record["paired_with"] == "hf-generate"


@pytest.mark.decode_perf(
    cache="paged", stream="hf-serve", batch_size=8, concurrency=4, new_tokens=32, prompt_lens="mixed"
)
def test_continuous_batching(decode_result: VariantResult) -> None:
    """transformers' continuous batching: 8 requests of different prompt lengths, 4 at once, each stopping at its
    own step (a request joins as another leaves); TTFT and TPOT per request, each held to generate() alone."""
    record = decode_result.record()
    assert record["requests"] == 8 and record["occupancy_max"] <= 4

"""The CUDA path: real streams, events, memory stats, profiler metrics. Runs only where CUDA is.

CI has no GPU, so these are skipped there with a reason; on a GPU machine they are the proof
that the ping-pong is correctly synchronized (parity with real stops on every cache type, batch
sizes 1..64) and that the GPU-only metrics are measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from pytest_decodeperf import Runner, Variant, build_model, check_parity, generate, make_workload
from pytest_decodeperf.engine.decode.caches import CacheSlot, get_cache
from pytest_decodeperf.engine.decode.stream_modes import get_stop_policy
from pytest_decodeperf.report import render_table

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


@pytest.fixture(scope="module")
def cuda_model():  # type: ignore[no-untyped-def]
    return build_model("tiny-gpt2", device="cuda")


@pytest.mark.parametrize("cache", ["none", "dynamic", "static"])
def test_pipelined_and_deferred_match_baseline_on_cuda_for_batch_1_to_64(cuda_model, cache: str) -> None:  # type: ignore[no-untyped-def]
    for batch in (1, 2, 3, 5, 8, 13, 16, 31, 32, 33, 48, 63, 64):
        w = make_workload(cuda_model, batch, 24, "eos", seed=batch)
        outs = {}
        for stream in ("baseline", "deferred", "pipelined", "nostop"):
            slot = CacheSlot(get_cache(cache), cuda_model, batch, w.prompts.shape[1] + 24)
            with torch.inference_mode():
                outs[stream] = generate(cuda_model, replace(w, max_new_tokens=24), slot, get_stop_policy(stream))
        assert outs["baseline"].new_tokens < 24  # a real stop
        assert outs["pipelined"].note == "cuda: 2 streams"
        for stream in ("deferred", "pipelined", "nostop"):
            report = check_parity(
                outs["baseline"].generated, outs[stream].generated, w.eos_ids, f"{cache}-{stream}-b{batch}"
            )
            assert report.ok, str(report)


def test_cuda_results_carry_event_timings_memory_and_profiler_metrics(cuda_model) -> None:  # type: ignore[no-untyped-def]
    runner = Runner("cuda", rounds=3, warmup=1)
    base = runner.run(Variant("tiny-gpt2", "static", "baseline", 1, 64, stop="none"), cuda_model).record()
    piped = runner.run(Variant("tiny-gpt2", "static", "pipelined", 1, 64, stop="none"), cuda_model).record()
    for rec in (base, piped):
        assert rec["peak_allocated_bytes"] and rec["peak_reserved_bytes"]
        assert rec["peak_reserved_bytes"] >= rec["peak_allocated_bytes"]
        assert rec["prefill_ms"] is not None and 0 < rec["prefill_ms"] < 1e3 * min(rec["samples_s"])
        assert rec["gpu_idle_fraction"] is not None and rec["syncs_per_token"] is not None
    assert base["syncs_per_token"] >= 0.9  # one blocking read of the flag per token
    assert piped["parity"] == "pass"


def test_hf_deferred_stop_check_matches_baseline_on_cuda(cuda_model) -> None:  # type: ignore[no-untyped-def]
    runner = Runner("cuda", rounds=2, warmup=1)
    rec = runner.run(Variant("tiny-gpt2", "dynamic", "hf-deferred", 4, 32), cuda_model).record()
    assert rec["parity"] == "pass"


def test_expandable_segments_run_in_their_own_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x.json"
    env = {
        **os.environ,
        "PYTORCH_ALLOC_CONF": "expandable_segments:True",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    cmd = [
        sys.executable,
        "-m",
        "pytest_decodeperf",
        "run",
        "--device",
        "cuda",
        "--caches",
        "dynamic",
        "--streams",
        "baseline",
        "--batch-sizes",
        "8",
        "--new-tokens",
        "32",
        "--rounds",
        "2",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    (rec,) = json.loads(out.read_text())["results"]
    assert rec["peak_reserved_bytes"] > 0


# --- the sync budget and the stream logic on real CUDA (issue 13) ---------------------------------------


@pytest.fixture(scope="module")
def cuda_llama():  # type: ignore[no-untyped-def]
    return build_model("tiny-llama-gqa", device="cuda")


def _decode_llama(model, stream: str, cache: str, batch: int = 8, sleep_cycles: int = 0):  # type: ignore[no-untyped-def]
    """One generation; ``sleep_cycles`` stalls each forward on its stream first, widening race windows."""
    from pytest_decodeperf.engine.decode.hidden_syncs import no_padding_check

    w = make_workload(model, batch, 24, "eos", seed=batch)
    slot = CacheSlot(get_cache(cache), model, batch, w.prompts.shape[1] + 24)
    hook = None
    if sleep_cycles:
        hook = model.register_forward_pre_hook(lambda *_: torch.cuda._sleep(sleep_cycles))
    try:
        with torch.inference_mode(), no_padding_check(model):
            out = generate(model, replace(w, max_new_tokens=24), slot, get_stop_policy(stream))
        torch.cuda.synchronize()
    finally:
        if hook is not None:
            hook.remove()
    return w, out


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_slow_producing_stream_does_not_break_pipelined_parity(cuda_llama, cache: str) -> None:  # type: ignore[no-untyped-def]
    _, expected = _decode_llama(cuda_llama, "baseline", cache)
    for stream in ("deferred", "pipelined"):
        w, out = _decode_llama(cuda_llama, stream, cache, sleep_cycles=2_000_000)  # ~1 ms per forward
        report = check_parity(expected.generated, out.generated, w.eos_ids, f"{cache}-{stream}-slowed")
        assert report.ok, str(report)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_lagged_modes_make_no_synchronizing_call_inside_the_loop(cuda_llama, cache: str) -> None:  # type: ignore[no-untyped-def]
    """torch's sync debug mode raises on any synchronizing CUDA call (.item(), pageable copies...)."""
    for stream in ("deferred", "pipelined", "nostop"):
        _decode_llama(cuda_llama, stream, cache)  # warm: lazy allocations are not the loop's
        torch.cuda.set_sync_debug_mode("error")
        try:
            from pytest_decodeperf.engine.decode.hidden_syncs import no_padding_check

            w = make_workload(cuda_llama, 8, 24, "none", seed=8)
            slot = CacheSlot(get_cache(cache), cuda_llama, 8, w.prompts.shape[1] + 24)
            with torch.inference_mode(), no_padding_check(cuda_llama):
                generate(cuda_llama, replace(w, max_new_tokens=24), slot, get_stop_policy(stream))
        finally:
            torch.cuda.set_sync_debug_mode(0)


def test_the_pipelined_loop_passes_torchs_cuda_sanitizer() -> None:
    code = (
        "import torch\n"
        "from pytest_decodeperf import build_model, make_workload, generate\n"
        "from pytest_decodeperf.engine.decode.caches import CacheSlot, get_cache\n"
        "from pytest_decodeperf.engine.decode.stream_modes import get_stop_policy\n"
        "m = build_model('tiny-llama-gqa', device='cuda')\n"
        "w = make_workload(m, 4, 16, 'eos')\n"
        "for stream in ('deferred', 'pipelined'):\n"
        "    slot = CacheSlot(get_cache('dynamic'), m, 4, w.prompts.shape[1] + 16)\n"
        "    with torch.inference_mode():\n"
        "        generate(m, replace(w, max_new_tokens=16), slot, get_stop_policy(stream))\n"
        "torch.cuda.synchronize()\n"
    )
    env = {**os.environ, "TORCH_CUDA_SANITIZER": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "CSAN detected" not in out.stderr, out.stderr[-3000:]


def test_pipelined_drains_the_stream_less_often_than_baseline(cuda_llama) -> None:  # type: ignore[no-untyped-def]
    runner = Runner("cuda", rounds=2, warmup=1)
    recs = {
        s: runner.run(Variant("tiny-llama-gqa", "static", s, 8, 32, stop="none"), cuda_llama).record()
        for s in ("baseline", "pipelined")
    }
    assert recs["pipelined"]["syncs_per_step"] == 0 and recs["baseline"]["syncs_per_step"] == 0
    assert recs["pipelined"]["draining_syncs_per_token"] < recs["baseline"]["draining_syncs_per_token"]


def test_the_static_cache_takes_its_analytic_size_from_the_allocator(cuda_model) -> None:  # type: ignore[no-untyped-def]
    """On CUDA, what the static cache asks the caching allocator for equals the config's size (its small
    tensors aside), small buffers and ones over 1 MiB (GPT-2 small, b8, 512 + 64 positions: 14 MiB tensors,
    which the allocator rounds); the dynamic cache's generation peak is reported beside it."""
    from pytest_decodeperf.engine.roofline.kv_memory import SMALL_BYTES_PER_LAYER

    runner = Runner("cuda", rounds=2, warmup=1)
    gpt2 = build_model("gpt2", device="cuda")
    for model, name, batch, prompt_len in ((cuda_model, "tiny-gpt2", 1, 4), (gpt2, "gpt2", 8, 512)):
        variant = Variant(name, "static", "baseline", batch, 64, stop="none", prompt_len=prompt_len)
        static = runner.run(variant, model).record()
        analytic = static["kv_cache_bytes_analytic"]
        allocated = static["kv_cache_allocated_bytes"]
        assert analytic and allocated is not None
        layers = model.config.n_layer
        assert analytic <= allocated <= analytic + SMALL_BYTES_PER_LAYER * layers
        assert "static cache:" not in static["note"]
        dynamic = runner.run(replace(variant, cache="dynamic"), model).record()
        assert dynamic["generation_peak_bytes"] and dynamic["generation_peak_bytes"] > 0
        assert dynamic["kv_cache_bytes_analytic"] == analytic
        assert "dynamic cache: the generation's peak" in render_table([static, dynamic])


@pytest.mark.parametrize("stream", ["baseline", "pipelined", "hf-generate"])
def test_every_decode_step_is_timed_by_cuda_events_read_after_the_round(cuda_model, stream: str) -> None:  # type: ignore[no-untyped-def]
    """One latency per decode step, from events on the steps' own streams; they add up to the decode time."""
    variant = Variant("tiny-gpt2", "static", stream, 2, 32, stop="none")
    result = Runner("cuda", rounds=2, warmup=1).run(variant, cuda_model)
    for rnd in result.measurement.rounds:
        assert len(rnd.step_s) == rnd.output.steps - 1 and all(s > 0 for s in rnd.step_s)
        assert sum(rnd.step_s) <= rnd.total_s - (rnd.prefill_s or 0.0)
    rec = result.record()
    assert rec["itl_p50_ms"] is not None and 0 < rec["itl_p50_ms"] <= rec["itl_p99_ms"] <= 1e3 * min(rec["samples_s"])
    if stream != "hf-generate":
        assert rec["syncs_per_step"] == 0  # the marks add no host read

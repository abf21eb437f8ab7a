"""Every decode step timed in the same rounds: inter-token latency percentiles and time to first token.

The arithmetic is checked on synthetic samples and on a fake clock that each forward advances by a known time (a
stall every few steps must show in the tail while the median stays put); that the per-step marks add no host read
and no sync inside the loop is checked under the CUDA simulator and the sync counter. No wall-clock statistic is
asserted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from engine_fixtures import tiny_model  # noqa: F401
from test_validity import PREFILL_MS, STEP_MS, FakeClock
from transformers import PreTrainedModel

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.decode.caches import CacheSlot, get_cache
from pytest_decodeperf.engine.decode.hidden_syncs import no_padding_check
from pytest_decodeperf.engine.decode.loop import generate
from pytest_decodeperf.engine.decode.observe import observers
from pytest_decodeperf.engine.decode.stream_modes import get_stop_policy
from pytest_decodeperf.engine.device.sim_cuda import SimRuntime
from pytest_decodeperf.engine.measure import rounds as measure
from pytest_decodeperf.engine.measure.counting import report as sync_report
from pytest_decodeperf.engine.measure.rounds import Clock, percentile
from pytest_decodeperf.engine.measure.syncs import SyncCounter, SyncObserver
from pytest_decodeperf.report import render_table

torch.set_num_threads(1)
NEW = 12


def test_percentiles_interpolate_between_ranks_as_numpy_does() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert percentile([5.0, 1.0], 0) == 1.0 and percentile([5.0, 1.0], 100) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)


class StallingClock(FakeClock):
    """Every ``every``-th decode step takes ``stall_ms`` more: a regression the median cannot see."""

    every = 0
    stall_ms = 0.0

    def forward(self, *_: object) -> None:
        stalled = self.every and self.calls > 0 and self.calls % self.every == 0
        self.extra_ms = self.stall_ms if stalled else 0.0
        super().forward()


@pytest.fixture
def clock(tiny_model: PreTrainedModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[StallingClock]:
    fake = StallingClock()
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    original = measure.Clock.start

    def start(self: measure.Clock) -> None:
        fake.new_generation()  # each round's first forward is its prefill
        original(self)

    monkeypatch.setattr(measure.Clock, "start", start)
    hook = tiny_model.register_forward_hook(fake.forward)
    yield fake
    hook.remove()


def measured(model: PreTrainedModel, stream: str, cache: str = "static") -> Any:
    runner = Runner("cpu", rounds=3, warmup=0, profile_gpu=False)
    return runner.run(Variant("tiny-gpt2", cache, stream, 2, NEW, stop="none"), model, parity=False)


@pytest.mark.parametrize("stream", ["baseline", "deferred", "pipelined", "nostop", "hf-generate"])
def test_every_decode_step_is_timed_and_its_latency_is_exact(
    tiny_model: PreTrainedModel, clock: StallingClock, stream: str
) -> None:
    result = measured(tiny_model, stream)
    for rnd in result.measurement.rounds:
        assert len(rnd.step_s) == rnd.output.steps - 1  # one latency per decode step, a lagged extra step too
        assert [1e3 * s for s in rnd.step_s] == pytest.approx([STEP_MS] * len(rnd.step_s))
    rec = result.record()
    assert rec["ttft_ms"] == pytest.approx(PREFILL_MS) and rec["ttft_ms"] == rec["prefill_ms"]
    for q in ("p50", "p90", "p99"):
        assert rec[f"itl_{q}_ms"] == pytest.approx(STEP_MS)
    assert rec["samples_itl_p99_ms"] == pytest.approx([STEP_MS] * 3)


def test_a_stall_every_few_steps_shows_in_the_tail_while_the_median_holds(
    tiny_model: PreTrainedModel, clock: StallingClock
) -> None:
    plain = measured(tiny_model, "baseline").record()
    clock.every, clock.stall_ms = 5, 10 * STEP_MS  # decode steps 5 and 10 of 11
    stalled = measured(tiny_model, "baseline").record()
    assert stalled["itl_p50_ms"] == pytest.approx(plain["itl_p50_ms"]) == pytest.approx(STEP_MS)
    assert stalled["itl_p99_ms"] == pytest.approx(11 * STEP_MS)  # 2 of 11 steps stall: p90 and p99 see them
    assert stalled["itl_p90_ms"] > 5 * STEP_MS
    assert stalled["samples_itl_p99_ms"] == pytest.approx([11 * STEP_MS] * 3)
    assert "itl p99" in render_table([stalled]) and f"{11 * STEP_MS:.3f}" in render_table([stalled])


class CountingSim(SimRuntime):
    """The CUDA simulator, counting what blocks the host or reads a timing."""

    def __init__(self) -> None:
        super().__init__()
        self.blocking = 0
        self.timings_read = 0

    def synchronize(self) -> None:
        self.blocking += 1
        super().synchronize()

    def synchronize_event(self, event: Any) -> None:
        self.blocking += 1
        super().synchronize_event(event)

    def elapsed_s(self, start: Any, end: Any) -> float:
        self.timings_read += 1
        return super().elapsed_s(start, end)


def watched_generation(model: PreTrainedModel, stream: str, timed: bool) -> tuple[int, int, int, int]:
    """One generation under the simulator and the sync counter: (host blocks, timings read, hidden reads in the
    worst decode step, latencies recorded), the blocks and reads counted inside the loop only."""
    runner = Runner("cpu", rounds=1, warmup=0)
    workload = runner.workload(model, Variant("tiny-gpt2", "dynamic", "baseline", 2, NEW))
    slot = CacheSlot(get_cache("dynamic"), model, 2, workload.prompts.shape[1] + NEW)
    counter = SyncCounter("cpu")
    with torch.no_grad(), no_padding_check(model), CountingSim() as sim:
        timer = Clock(torch.device("cpu"), runtime=sim)
        timer.start()
        before = sim.blocking
        watch = observers(SyncObserver(counter), timer if timed else None)
        with counter:
            out = generate(model, replace(workload, max_new_tokens=NEW), slot, get_stop_policy(stream), watch, sim)
        inside = (sim.blocking - before, sim.timings_read)
        timer.stop()
        out.tokens = out.tokens.clone()  # read on the caller's stream, after the join
    assert not timed or len(timer.step_s()) == out.steps - 1
    return (*inside, sync_report(counter, 0).max_hidden, len(timer.step_s()))


@pytest.mark.parametrize("stream", ["baseline", "pipelined", "nostop"])
def test_per_step_events_add_no_host_read_and_no_sync_inside_the_loop(tiny_model: PreTrainedModel, stream: str) -> None:
    """The simulator raises on a mark read before its stream is joined; the counts match an untimed generation."""
    blocks, reads, hidden, _ = watched_generation(tiny_model, stream, timed=False)
    timed_blocks, timed_reads, timed_hidden, latencies = watched_generation(tiny_model, stream, timed=True)
    assert (timed_blocks, timed_reads, timed_hidden) == (blocks, 0, hidden) == (blocks, 0, 0) and reads == 0
    assert latencies > 0

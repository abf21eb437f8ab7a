"""Self-tests of the harness's clock arithmetic, deterministic: the model's forwards advance a fake clock.

Each forward advances the clock the harness reads by a known time (prefill P ms, each decode step
S ms, plus D ms of injected work per step), so the harness must report exactly prefill = P,
ms/token = S + D and the slowdown D / S: the clock marks, the prefill split and the per-step
arithmetic are right, on every stream mode and cache, with no wall-clock noise in CI.

The same checks against the real clock (an independent stopwatch, injected busy-work, the gate's
A/A false alarms) are benchmarks: ``python scripts/validity_figures.py``, figures in docs/explanation/validity.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
from engine_fixtures import tiny_model  # noqa: F401
from transformers import PreTrainedModel

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.measure import rounds as measure

PREFILL_MS, STEP_MS = 7.0, 2.0


class FakeClock:
    """``perf_counter`` for the harness: moves only when a forward runs."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.calls = 0
        self.extra_ms = 0.0

    def perf_counter(self) -> float:
        return self.now

    def forward(self, *_: object) -> None:
        ms = PREFILL_MS if self.calls == 0 else STEP_MS + self.extra_ms
        self.now += ms / 1e3
        self.calls += 1

    def new_generation(self) -> None:
        self.calls = 0


@pytest.fixture
def clock(tiny_model: PreTrainedModel, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    hook = tiny_model.register_forward_hook(fake.forward)
    yield fake
    hook.remove()


def measured(runner: Runner, variant: Variant, model: PreTrainedModel, clock: FakeClock) -> dict[str, float]:
    original = measure.Clock.start

    def start(self: measure.Clock) -> None:
        clock.new_generation()  # each round's first forward is its prefill
        original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(measure.Clock, "start", start)
        rec = runner.run(variant, model).record()
    return {"prefill": rec["prefill_ms"] or 0.0, "ms": rec["ms_per_token"], "tps": rec["tokens_per_s"]}


@pytest.mark.parametrize("stream", ["baseline", "deferred", "pipelined", "nostop"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_the_harness_reports_exactly_the_time_each_phase_took(
    tiny_model: PreTrainedModel,
    clock: FakeClock,
    stream: str,
    cache: str,
) -> None:
    torch.set_num_threads(1)
    runner = Runner("cpu", rounds=3, warmup=1, profile_gpu=False)
    variant = Variant("tiny-gpt2", cache, stream, 2, 12, stop="none")
    plain = measured(runner, variant, tiny_model, clock)
    assert plain["prefill"] == pytest.approx(PREFILL_MS)
    assert plain["ms"] == pytest.approx(STEP_MS)
    # 2 rows x 12 tokens in one prefill and 11 decode steps.
    assert plain["tps"] == pytest.approx(24 / ((PREFILL_MS + 11 * STEP_MS) / 1e3))
    for injected in (0.1, 0.25):
        clock.extra_ms = injected * STEP_MS
        slowed = measured(runner, variant, tiny_model, clock)
        assert slowed["prefill"] == pytest.approx(PREFILL_MS)
        assert slowed["ms"] / plain["ms"] - 1 == pytest.approx(injected)
    clock.extra_ms = 0.0

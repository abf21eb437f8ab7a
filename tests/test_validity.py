"""Self-tests of the harness: it measures a known slowdown as that slowdown.

A forward hook busy-waits a fixed time in every decode step. Rounds with and without it alternate
(tests/interleave.py), so the machine's own swings hit both sides alike. Two checks:

- the harness's slowdown agrees within 2 percentage points with the slowdown of an independent
  stopwatch (forward start to forward start, perf_counter in a pre-hook): the clock marks, the
  prefill split and the per-step arithmetic are right;
- the slowdown is never below the injected work (less 2 points), and the work's cost in context
  stays within reason. On a 2-core VM the rest of a step slows by about a quarter of the injected
  spin, or more (measured: 0.58 ms of spin added 0.74 ms per step), so "exactly the injected amount" is not
  what the machine does; README's validity section gives the figures.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pytest
import torch
from engine_fixtures import tiny_model  # noqa: F401
from interleave import interleaved
from transformers import PreTrainedModel

from pytest_decodeperf import Runner, Variant

VARIANT = Variant("tiny-gpt2", "dynamic", "baseline", 1, 32, stop="none")


@dataclass
class Slowdown:
    injected: float  # the spin's time over the plain step time
    measured: float  # the harness: slowed ms/token over plain ms/token, less one
    stopwatch: float  # the same from forward start times
    plain_ms: float
    stopwatch_plain_ms: float

    def __str__(self) -> str:
        return (
            f"injected {self.injected:.1%}, harness {self.measured:.1%}, stopwatch {self.stopwatch:.1%} "
            f"(plain: harness {self.plain_ms:.3f} ms/token, stopwatch {self.stopwatch_plain_ms:.3f} ms/step)"
        )


def step_ms(starts: list[float]) -> float:
    """Mean decode step from one round's forward start times (the first forward is the prefill)."""
    return 1e3 * (starts[-1] - starts[1]) / (len(starts) - 2)


def slowdown(model: PreTrainedModel, injected: float, rounds: int = 31) -> Slowdown:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2-core machine: keep torch's threads from fighting the spin
    try:
        runner = Runner("cpu", rounds=rounds, warmup=2, profile_gpu=False)
        base = runner.run(VARIANT, model).measurement.ms_per_token
        delay_s = injected * base / 1e3
        starts: list[list[float]] = []
        plain, slowed = interleaved(runner, VARIANT, model, [0.0, delay_s], rounds, stopwatch=starts)
    finally:
        torch.set_num_threads(threads)
    pairs = list(zip(plain.measurement.rounds, slowed.measurement.rounds, strict=True))
    watched = list(zip(starts[0::2], starts[1::2], strict=True))
    assert len(watched) == len(pairs) == rounds
    return Slowdown(
        injected=statistics.median(delay_s * 1e3 / p.ms_per_token for p, _ in pairs),
        measured=statistics.median(s.ms_per_token / p.ms_per_token - 1 for p, s in pairs),
        stopwatch=statistics.median(step_ms(s) / step_ms(p) - 1 for p, s in watched),
        plain_ms=statistics.median(p.ms_per_token for p, _ in pairs),
        stopwatch_plain_ms=statistics.median(step_ms(p) for p, _ in watched),
    )


@pytest.mark.parametrize("injected", [0.10, 0.25])
def test_a_known_slowdown_is_measured_as_that_slowdown(tiny_model: PreTrainedModel, injected: float) -> None:
    s = slowdown(tiny_model, injected)
    assert abs(s.plain_ms / s.stopwatch_plain_ms - 1) <= 0.05, f"the harness and the stopwatch disagree: {s}"
    assert abs(s.measured - s.stopwatch) <= 0.02, f"the harness and the stopwatch disagree: {s}"
    assert s.measured >= s.injected - 0.02, f"less slowdown measured than injected: {s}"
    assert s.measured <= 2 * s.injected + 0.02, f"far more slowdown measured than injected: {s}"

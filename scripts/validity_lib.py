"""Live validity measurements of the harness and the history gate, for scripts/validity_figures.py.

These time real generations on this machine, so they are benchmarks, not CI tests (CI asserts no
wall-clock statistics; tests/test_validity.py checks the clock's arithmetic against a fake clock).
Rounds of the two sides are interleaved (``interleave.py``): a shared 2-core VM changes speed by
tens of percent for seconds at a time, which no statistic over one run's samples can tell from a
code change.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from interleave import interleaved, records
from transformers import PreTrainedModel

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.device.machine import machine_info
from pytest_decodeperf.history.compare import Comparison, compare_with_history
from pytest_decodeperf.history.storage import write_history
from pytest_decodeperf.records import ResultRecord

# -- the history gate on real measurements ----------------------------------------------------------

VARIANTS = [Variant("tiny-gpt2", "dynamic", s, 1, 32, stop="none") for s in ("baseline", "pipelined")]
FAIL_PCT = 5.0  # the plugin's default --decodeperf-fail-on-regression
ROUNDS = 41  # timed rounds per side: with 9 or 21, a 10% slowdown on this noisy VM is often only "~"


def commit(i: int) -> str:
    return f"{i:02d}" * 20


def sides(model: PreTrainedModel, slowdown: float = 0.0) -> tuple[list[ResultRecord], list[ResultRecord]]:
    """(before, after) records; ``after`` does ``slowdown`` x the plain step time of extra work per step."""
    runner = Runner("cpu", rounds=ROUNDS, warmup=1, profile_gpu=False)
    delay_s = slowdown * runner.run(VARIANTS[0], model).measurement.ms_per_token / 1e3 if slowdown else 0.0
    before, after = records(
        runner, VARIANTS, model, [0.0, delay_s], ROUNDS, lambda v: f"tests/test_gate.py::test_decode[{v.id}]"
    )
    return before, after


def gate(before: list[ResultRecord], after: list[ResultRecord], results: Path, i: int) -> Comparison:
    """Store ``before`` as commit 2i, then judge ``after`` as commit 2i+1 against history."""
    info = machine_info("cpu")
    write_history(before, info, results, commit(2 * i), name="gate-test", date_ms=1_700_000_000_000 + 2 * i)
    cmp = compare_with_history(
        after, results, machine="gate-test", current_commit=commit(2 * i + 1), fail_pct=FAIL_PCT, repo_dir=None
    )
    assert cmp.problem is None, cmp.problem
    assert cmp.ref == commit(2 * i), "the gate compared with the wrong commit"
    assert cmp.rows, "nothing was compared"
    write_history(after, info, results, commit(2 * i + 1), name="gate-test", date_ms=1_700_000_000_001 + 2 * i)
    return cmp


def a_a_false_alarms(model: PreTrainedModel, results: Path, runs: int = 10) -> list[str]:
    alarms: list[str] = []
    for i in range(runs):
        cmp = gate(*sides(model), results, i)
        alarms += [f"run {i + 1}: {r.label} x{r.ratio:.2f}" for r in cmp.regressions]
    return alarms


def slowdown_comparison(model: PreTrainedModel, results: Path, slowdown: float = 0.10) -> Comparison:
    return gate(*sides(model, slowdown), results, 0)


# -- injected slowdown: the harness against an independent stopwatch -------------------------------------

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

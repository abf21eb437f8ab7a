"""Interleaved A/B measurement for the harness's self-tests (test_validity, test_gate_validity).

A shared 2-core VM changes speed by tens of percent for seconds at a time (measured: the same
matmul loop 100 ms, then 155 ms). Two runs measured one after the other see different machines,
and no within-run statistic can tell that from a code change. Interleaving round by round, A, B,
A, B, ..., puts both sides on the same machine state, so what is left between them is the
injected difference and the round-to-round noise the gate's statistics are built for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from transformers import PreTrainedModel

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.decode.loop import DecodeOutput
from pytest_decodeperf.engine.measure.rounds import Clock, Measurement, measure
from pytest_decodeperf.engine.results import VariantResult
from pytest_decodeperf.records import ResultRecord


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class StepWork:
    """A forward hook on ``model`` that busy-waits ``seconds`` per forward (so per decode step).

    Both sides of a comparison carry the hook; only ``seconds`` differs between them. A second,
    independent stopwatch notes when each forward starts (``starts``, perf_counter), so a test can
    check the harness's per-step times against step times it did not compute.
    """

    def __init__(self, model: PreTrainedModel):
        self.seconds = 0.0
        self.starts: list[float] = []
        self.handle = model.register_forward_hook(lambda *_: spin(self.seconds))
        self.pre = model.register_forward_pre_hook(lambda *_: self.starts.append(time.perf_counter()))

    def remove(self) -> None:
        self.handle.remove()
        self.pre.remove()


def interleaved(
    runner: Runner,
    variant: Variant,
    model: PreTrainedModel,
    delays_s: Sequence[float],
    rounds: int,
    stopwatch: list[list[float]] | None = None,
) -> list[VariantResult]:
    """``variant`` measured once per entry of ``delays_s`` (extra work per step), rounds interleaved.

    Round k of every side runs before round k+1 of any side. Returns one result per side, each
    with its own ``rounds`` samples, recordable like any other measurement. ``stopwatch``, if
    given, receives the forward start times of every timed round, in the order the rounds ran.
    """
    work = StepWork(model)
    workload = runner.workload(model, variant)
    once = runner.run_once_fn(model, variant, workload)
    calls = 0

    def alternating(clock: Clock) -> DecodeOutput:
        nonlocal calls
        work.seconds = delays_s[calls % len(delays_s)]
        calls += 1
        work.starts = []
        out = once(clock)
        if stopwatch is not None and calls > runner.warmup * len(delays_s):
            stopwatch.append(work.starts)
        return out

    try:
        sides = len(delays_s)
        m = measure(alternating, runner.device, rounds * sides, runner.warmup * sides)
    finally:
        work.remove()
    return [
        VariantResult(variant, runner.device, workload, Measurement(m.rounds[i :: len(delays_s)], []), None)
        for i in range(len(delays_s))
    ]


def records(
    runner: Runner,
    variants: Sequence[Variant],
    model: PreTrainedModel,
    delays_s: Sequence[float],
    rounds: int,
    test: Callable[[Variant], str],
) -> list[list[ResultRecord]]:
    """Per side, the records of all ``variants`` (each variant's sides interleaved)."""
    per_variant = [interleaved(runner, v, model, delays_s, rounds) for v in variants]
    return [[res[side].record(test(res[side].variant)) for res in per_variant] for side in range(len(delays_s))]

"""Timing and memory for one variant: warmup rounds apart, then timed rounds until the median is pinned.

The clock reads the device's time, never the host's view of it: on CUDA, events recorded on
the stream (start, end of prefill, end of every decode step, end) and read after one synchronize
at the end of the round, so timing adds no sync inside the loop; on CPU, kernels run synchronously
on the host, so ``perf_counter`` at the same points is already the device's time.

Every decode step is timed in the same rounds: step ``i``'s inter-token latency (ITL) is its mark
less step ``i - 1``'s (the prefill's for the first), so a stall every N steps shows in the tail
(p90, p99) even when the median barely moves. Time to first token (TTFT) is the prefill's mark:
the prefill yields the first token.

Rounds adapt, as pyperf calibrates: after the minimum, more rounds while the median's 95% interval
(order statistics, no distribution assumed) is wider than ``target_pct`` of it, within a time budget.
Given a ``reference`` (the same workload in the baseline stream mode), its rounds alternate with the
variant's, and the variant's speedup is the median of the per-pair ratios: a machine whose speed moves
between two variants' measurements moves both halves of a pair alike.
"""

from __future__ import annotations

import gc
import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..decode.observe import Observer
from ..decode.request import DecodeOutput
from ..device.runtime import DeviceRuntime, runtime_for
from .stats import half_width_pct, median_interval, percentile
from .steady import collector_paused


class Clock(Observer):
    """Marks start, end of prefill, end of each decode step, and end of one generation on ``device``.

    An observer of the generation (``decode/observe.py``): a step's ``launched`` is its mark.

    CUDA's events come from the device runtime (``device_runtime.py``): start, prefill and end fresh
    each round, so a round that never marks its prefill cannot read the previous round's mark; the
    per-step events from a pool made once and reused (a round reads only the marks it recorded),
    so a step costs one event record and nothing is read before ``stop``'s synchronize.
    """

    def __init__(self, device: torch.device, runtime: DeviceRuntime | None = None):
        self.runtime = runtime if runtime is not None else runtime_for(device)
        self.cuda = self.runtime.has_streams
        self.device = device
        self._t: list[float] = []
        self._events: list[Any] = []
        self._step_events: list[Any] = []  # the pool
        self._step_t: list[float] = []
        self._steps = 0  # steps marked this round
        self._step_s: list[float] = []

    def start(self) -> None:
        self._steps, self._step_s = 0, []
        if self.cuda:
            self.runtime.synchronize()  # nothing queued before may count
            self._events = [self.runtime.new_event(timing=True)]
            self.runtime.record(self._events[0])
        else:
            self._step_t = []
            self._t = [time.perf_counter()]

    def launched(self, step: int) -> None:
        if step == 0:
            self.mark_prefill()
        else:
            self.mark_step()

    def mark_prefill(self) -> None:
        """Called on the prefill's stream right after the prefill is launched."""
        if self.cuda:
            self._events.append(self.runtime.new_event(timing=True))
            self.runtime.record(self._events[-1])
        else:
            self._t.append(time.perf_counter())

    def mark_step(self) -> None:
        """Called on the step's stream right after decode step ``i`` (i >= 1) is launched; never reads a mark."""
        if self.cuda:
            if self._steps == len(self._step_events):
                self._step_events.append(self.runtime.new_event(timing=True))
            self.runtime.record(self._step_events[self._steps])
        else:
            self._step_t.append(time.perf_counter())
        self._steps += 1

    def stop(self) -> tuple[float, float | None]:
        """End the round: (total seconds, prefill seconds or None if never marked); ``step_s()`` then holds the ITLs."""
        if self.cuda:
            end = self.runtime.new_event(timing=True)
            self.runtime.record(end)
            self.runtime.synchronize_event(end)
            start = self._events[0]
            total = self.runtime.elapsed_s(start, end)
            pre = self.runtime.elapsed_s(start, self._events[1]) if len(self._events) > 1 else None
            if len(self._events) > 1:
                marks = [self._events[1], *self._step_events[: self._steps]]
                self._step_s = [self.runtime.elapsed_s(a, b) for a, b in itertools.pairwise(marks)]
            return total, pre
        now = time.perf_counter()
        pre_cpu = self._t[1] - self._t[0] if len(self._t) > 1 else None
        if len(self._t) > 1:
            self._step_s = [b - a for a, b in itertools.pairwise([self._t[1], *self._step_t])]
        return now - self._t[0], pre_cpu

    def step_s(self) -> list[float]:
        """The last round's inter-token latencies in seconds: each decode step's mark less the one before."""
        return list(self._step_s)


@dataclass
class Round:
    total_s: float
    prefill_s: float | None
    output: DecodeOutput
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    start_allocated_bytes: int | None = None  # allocated when the round began (weights, a kept cache)
    step_s: list[float] = field(default_factory=list)  # inter-token latency of each decode step (Clock.step_s)

    @property
    def generation_peak_bytes(self) -> int | None:
        """The most the generation itself added over what was resident when it began."""
        if self.peak_allocated_bytes is None or self.start_allocated_bytes is None:
            return None
        return self.peak_allocated_bytes - self.start_allocated_bytes

    @property
    def decode_steps(self) -> int:
        return max(self.output.steps - 1, 0)

    @property
    def ms_per_token(self) -> float:
        """Decode milliseconds per step: prefill excluded, a lagged extra step included."""
        decode_s = self.total_s - (self.prefill_s or 0.0)
        return 1e3 * decode_s / self.decode_steps if self.decode_steps else float("nan")

    @property
    def tokens_per_s(self) -> float:
        """Tokens returned (rows x kept width) per wall second of the whole generation."""
        batch = int(self.output.tokens.shape[0])
        return batch * self.output.new_tokens / self.total_s


TARGET_PCT = 2.0  # rounds go on while the median's 95% interval is wider than +-this, within the budget
UNSTABLE_PCT = 5.0  # wider than +-this at the end: the median is not a measurement (pyperf's "unstable")


@dataclass
class Measurement:
    rounds: list[Round]
    warmup_s: list[float] = field(default_factory=list)
    compile_stats: dict[str, int] = field(default_factory=dict)  # dynamo counters during these rounds
    memory_rounds: list[Round] = field(default_factory=list)  # CUDA: the untimed round memory is read in
    reference_rounds: list[Round] = field(default_factory=list)  # the baseline's, alternating with ``rounds``

    @property
    def ratios(self) -> list[float]:
        """tok/s of each round over the reference round run beside it (empty: not paired)."""
        return [r.tokens_per_s / ref.tokens_per_s for r, ref in zip(self.rounds, self.reference_rounds, strict=False)]

    @property
    def vs_reference(self) -> tuple[float, float, float] | None:
        """``(median, lo, hi)`` of the paired ratios: the speedup over the baseline (None: not paired)."""
        return median_interval(self.ratios) if self.reference_rounds else None

    @property
    def precision_pct(self) -> float:
        """How well the figure that matters is pinned: the half-width of the 95% interval of the paired
        ratio's median when paired, else of the tok/s median, in percent."""
        return half_width_pct(self.ratios if self.reference_rounds else [r.tokens_per_s for r in self.rounds])

    @property
    def last(self) -> DecodeOutput:
        return self.rounds[-1].output

    def median(self, values: Sequence[float]) -> float:
        return float(statistics.median(values)) if values else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.median([r.tokens_per_s for r in self.rounds])

    @property
    def ms_per_token(self) -> float:
        return self.median([r.ms_per_token for r in self.rounds])

    @property
    def prefill_ms(self) -> float | None:
        values = [1e3 * r.prefill_s for r in self.rounds if r.prefill_s is not None]
        return self.median(values) if values else None

    @property
    def spread_pct(self) -> float:
        """Interquartile range of tokens/s over its median, in percent."""
        values = sorted(r.tokens_per_s for r in self.rounds)
        if len(values) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return 100.0 * (q3 - q1) / statistics.median(values)

    def itl_ms(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) of every decode step's inter-token latency, all timed rounds pooled."""
        values = [1e3 * s for r in self.rounds for s in r.step_s]
        return percentile(values, q) if values else None

    def round_itl_ms(self, q: float) -> list[float]:
        """Per timed round, the ``q``-th percentile of its decode steps' latencies (asv's samples of a tail)."""
        return [percentile([1e3 * s for s in r.step_s], q) for r in self.rounds if r.step_s]

    @property
    def generation_peak_bytes(self) -> int | None:
        """CUDA: the memory round's peak over what was allocated when it began (None elsewhere)."""
        values = [v for r in self.memory_rounds if (v := r.generation_peak_bytes) is not None]
        return max(values) if values else None

    def fields(self) -> dict[str, Any]:
        """The record's timing and memory fields (``records.ResultRecord``): medians, samples, ITL, the paired ratio."""
        vs = self.vs_reference
        return {
            "tokens_per_s": self.tokens_per_s,
            "ms_per_token": self.ms_per_token,
            "prefill_ms": self.prefill_ms,
            "peak_allocated_bytes": self.peak("peak_allocated_bytes"),
            "peak_reserved_bytes": self.peak("peak_reserved_bytes"),
            "rounds": len(self.rounds),
            "warmup_s": list(self.warmup_s),
            "samples_s": [r.total_s for r in self.rounds],
            "samples_ms_per_token": [r.ms_per_token for r in self.rounds],
            "samples_prefill_ms": [1e3 * r.prefill_s for r in self.rounds if r.prefill_s is not None],
            "ttft_ms": self.prefill_ms,
            "itl_p50_ms": self.itl_ms(50),
            "itl_p90_ms": self.itl_ms(90),
            "itl_p99_ms": self.itl_ms(99),
            "samples_itl_p90_ms": self.round_itl_ms(90),
            "samples_itl_p99_ms": self.round_itl_ms(99),
            "spread_pct": self.spread_pct,
            "precision_pct": self.precision_pct,
            "unstable": not self.precision_pct <= UNSTABLE_PCT,
            "vs_baseline": vs[0] if vs else None,
            "vs_baseline_low": vs[1] if vs else None,
            "vs_baseline_high": vs[2] if vs else None,
            "generation_peak_bytes": self.generation_peak_bytes,
        }

    def serving_samples(self) -> dict[str, list[float]]:
        """Continuous batching: per timed round, the median request's TPOT and TTFT (asv's samples; else empty)."""
        served = [s for r in self.rounds if (s := r.output.serving) is not None]
        return {
            "samples_tpot_ms": [statistics.median(s.tpot_ms) for s in served if s.tpot_ms],
            "samples_request_ttft_ms": [statistics.median(s.ttft_ms) for s in served if s.ttft_ms],
        }

    def peak(self, attr: str) -> int | None:
        values = [getattr(r, attr) for r in [*self.memory_rounds, *self.rounds] if getattr(r, attr) is not None]
        return max(values) if values else None


RunOnce = Callable[[Clock], DecodeOutput]
# Figures of this rank in, the same figures as the slowest rank saw them out (each the max over ranks); called
# after a round, never inside it (distributed.RankGroup.slowest). None: one process.
Combine = Callable[[Sequence[float]], list[float]]


def slowest(rnd: Round, combine: Combine | None, *extra: float) -> tuple[Round, list[float]]:
    """``rnd`` as the slowest rank timed it (total, prefill and every step each a max over ranks), and ``extra``
    figures likewise: every rank then holds the same round, so every rank's next decision is the same."""
    if combine is None:
        return rnd, list(extra)
    values = combine([rnd.total_s, -1.0 if rnd.prefill_s is None else rnd.prefill_s, *extra, *rnd.step_s])
    n = 2 + len(extra)
    pre = None if values[1] < 0 else values[1]
    return replace(rnd, total_s=values[0], prefill_s=pre, step_s=values[n:]), values[2:n]


@dataclass(frozen=True)
class Budget:
    """How many timed rounds: at least ``rounds``; then more while the median's interval is wider than
    ``target_pct``, for at most ``max_time_s`` past the minimum (0: exactly ``rounds``). ``elapsed_s``:
    the seconds since the minimum was reached."""

    rounds: int
    max_time_s: float = 0.0
    target_pct: float = TARGET_PCT
    max_rounds: int = 500

    def more(self, done: int, elapsed_s: float, precision_pct: float) -> bool:
        if done < self.rounds:
            return True
        if done >= self.max_rounds or elapsed_s >= self.max_time_s:
            return False
        return precision_pct > self.target_pct


def measure(
    run_once: RunOnce,
    device: torch.device,
    rounds: int | Budget,
    warmup: int,
    settled: Callable[[], int] | None = None,
    max_extra_warmup: int = 5,
    reference: Callable[[], RunOnce] | None = None,
    combine: Combine | None = None,
) -> Measurement:
    """Run ``warmup`` rounds (their times kept apart), then timed ones as the budget says.

    ``run_once(clock)`` runs one generation and calls ``clock.mark_prefill()`` after the prefill.
    ``settled``: a counter (e.g. compiled graphs) that must stop moving before timing starts;
    warmup goes on, up to ``max_extra_warmup`` more rounds, while a round still changes it, so
    a recompile is never inside the timed rounds. ``reference``: makes the baseline's generation, warmed
    once and timed in a round of its own beside each of the variant's, first and second in turn
    (``Measurement.vs_reference``); dropped after the timed rounds, before the memory round, so its
    cache never counts in the variant's memory. ``combine``: tensor-parallel ranks; each round, warmup
    included, counts as its slowest rank's, and the budget's decisions are taken on those figures, so
    every rank runs the same rounds (``slowest``).
    """
    budget = rounds if isinstance(rounds, Budget) else Budget(rounds)
    clock = Clock(device)
    cuda = device.type == "cuda"
    warm: list[float] = []
    # As timeit does: no garbage-collector pause lands inside a timed round. Collected first: the young
    # generations (what the previous variant left; cheap), and on CUDA all of them, since cyclic garbage
    # holding device tensors would count in the memory round (a full collect costs ~0.2 s on CPU, more than
    # a tiny variant's rounds: the test suite runs hundreds).
    with collector_paused(collect=2 if cuda else 1):
        return _measure(
            run_once, clock, cuda, device, budget, warmup, settled, max_extra_warmup, warm, reference, combine
        )


def _measure(
    run_once: RunOnce,
    clock: Clock,
    cuda: bool,
    device: torch.device,
    budget: Budget,
    warmup: int,
    settled: Callable[[], int] | None,
    max_extra_warmup: int,
    warm: list[float],
    make_reference: Callable[[], RunOnce] | None,
    combine: Combine | None,
) -> Measurement:
    with torch.inference_mode():
        changed = False
        for i in range(warmup + max_extra_warmup):
            if i >= warmup and not changed:
                break
            before = settled() if settled is not None else 0
            clock.start()
            out = run_once(clock)
            total, pre = clock.stop()
            moved = float(settled is not None and settled() != before)
            rnd, (moved,) = slowest(Round(total, pre, out), combine, moved)  # a graph compiled on any rank
            warm.append(rnd.total_s)
            changed = moved > 0

        def timed_round(fn: RunOnce) -> tuple[Round, float]:
            """A round and the timed rounds' seconds so far, both as the slowest rank saw them."""
            clock.start()
            out = fn(clock)
            total, pre = clock.stop()
            rnd, (elapsed,) = slowest(
                Round(total, pre, out, step_s=clock.step_s()), combine, time.perf_counter() - began
            )
            return rnd, elapsed

        began = time.perf_counter()
        reference = make_reference() if make_reference is not None else None
        if reference is not None:
            timed_round(reference)  # warm (the baseline may not have run in this process yet)
        timed: list[Round] = []
        paired: list[Round] = []
        precision, elapsed = math.inf, 0.0  # elapsed: seconds since the minimum rounds were in
        while budget.more(len(timed), elapsed, precision):
            if reference is not None and len(timed) % 2 == 1:  # R V, V R, R V, ...: drift inside a pair cancels
                rnd, elapsed = timed_round(run_once)
                paired.append(timed_round(reference)[0])
            else:
                if reference is not None:
                    paired.append(timed_round(reference)[0])
                rnd, elapsed = timed_round(run_once)
            timed.append(rnd)
            precision = Measurement(timed, reference_rounds=paired).precision_pct
            if len(timed) == budget.rounds:  # the same round on every rank: the budget's clock starts now
                began, elapsed = time.perf_counter(), 0.0
        reference = None  # its cache must not count in the memory round
        memory: list[Round] = []
        if cuda:
            # Memory has its own untimed round: as the article does, it starts from an empty
            # allocator cache, so the reserved peak shows this variant's fragmentation. Emptying
            # the cache before timed rounds would time cudaMalloc calls instead of decoding.
            gc.collect()  # the paired baseline's cache, if anything cyclic still holds it
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            start = int(torch.cuda.memory_allocated(device))
            clock.start()
            out = run_once(clock)
            clock.stop()
            rnd = Round(0.0, None, out, start_allocated_bytes=start)
            rnd.peak_allocated_bytes = int(torch.cuda.max_memory_allocated(device))
            rnd.peak_reserved_bytes = int(torch.cuda.max_memory_reserved(device))
            memory.append(rnd)
    return Measurement(timed, warm, memory_rounds=memory, reference_rounds=paired)

"""One variant made ready for timed rounds on demand: the unit of work of the same-session A/B gate.

``measure()`` runs all of a variant's rounds at once. An A/B run instead interleaves single rounds
of two processes (ABBA), so each side must be able to run *one* timed generation when asked, with
the same clock, the same thread pinning and the same removal of transformers' hidden host reads as
a normal measurement, and no per-round extras (no memory round, no profiler) that would land
between the two halves of a pair.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator

import torch
from transformers import PreTrainedModel

from .decode.hidden_syncs import no_padding_check
from .measure.profiling import compile_counters
from .measure.rounds import Clock, Round, measure
from .measure.steady import collector_paused, pinned_threads
from .runner import Runner
from .spec.checks import check_dtype
from .spec.variants import Variant

# lower is better; what the A/B gate decides on (a serving variant's per-request TPOT and TTFT too)
METRICS = ("ms_per_token", "prefill_ms", "tpot_ms", "request_ttft_ms")


class PairedRounds:
    """``warm()`` once, then ``round()`` as often as the gate asks; ``syncs_per_step()`` is exact."""

    def __init__(self, runner: Runner, model: PreTrainedModel, variant: Variant):
        self.runner = runner
        self.model = model
        self.variant = variant.validate(runner.device)
        check_dtype(model, variant)  # as Runner.run: the A/B files its verdict under the variant's dtype
        self.workload = runner.workload(model, variant)
        self._once = runner.run_once_fn(model, variant, self.workload)
        self._clock = Clock(runner.device)

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[None]:
        with pinned_threads(self.runner.threads), no_padding_check(self.model):
            yield

    def warm(self) -> None:
        """The runner's warmup rounds (at least one; more while torch.compile still makes graphs)."""
        settled = (lambda: compile_counters()["unique_graphs"]) if self.variant.compile else None
        with self._pinned():
            measure(self._once, self.runner.device, 0, max(self.runner.warmup, 1), settled)

    def round(self) -> dict[str, float]:
        """One timed generation: its metrics (``METRICS``), lower is better."""
        # as timeit does: no collector pause inside the round (a full collect costs more than one)
        with collector_paused(), self._pinned(), torch.inference_mode():
            self._clock.start()
            out = self._once(self._clock)
            total, prefill = self._clock.stop()
        timed = Round(total, prefill, out)
        metrics = {"ms_per_token": timed.ms_per_token}
        if prefill is not None:
            metrics["prefill_ms"] = 1e3 * prefill
        served = out.serving
        if served is not None and served.tpot_ms and served.ttft_ms:
            metrics["tpot_ms"] = statistics.median(served.tpot_ms)
            metrics["request_ttft_ms"] = statistics.median(served.ttft_ms)
        return metrics

    def close(self) -> None:
        """Stop what its generation keeps running between rounds (a continuous-batching server)."""
        self.runner.close_generations()

    def syncs_per_step(self) -> float | None:
        """Hidden blocking device reads per decode step (deterministic; None where not counted)."""
        with self._pinned():
            report = self.runner.count_syncs(self.model, self.variant, self.workload, None)
        return None if report is None else report.hidden_per_step

"""One item's A/B verdict: its metrics' gates, its sync counts, the line and the record it ends as.

Apart from the controller (``controller.py``), which feeds the gates, so the rules of when an item is
settled and when it fails can be read, and tested on synthetic gates, without any process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..records import ABMetric, ABRecord
from .checkout import Sides
from .clustered import ClusteredAB
from .decision import Verdict

METRIC_NAMES = {"ms_per_token": "ms/token", "prefill_ms": "prefill", "tpot_ms": "TPOT", "request_ttft_ms": "TTFT"}
PRIMARY = "ms_per_token"  # the metric a run keeps sampling for; the others ride along unless resolvable


@dataclass
class ItemVerdict:
    nodeid: str
    label: str
    gates: dict[str, ClusteredAB] = field(default_factory=dict)
    syncs: tuple[float | None, float | None] = (None, None)
    error: str | None = None
    differs: str = ""  # what differs between the sides' environments, A -> B ("": nothing, or not known)

    @property
    def verdicts(self) -> dict[str, Verdict]:
        return {name: gate.verdict() for name, gate in self.gates.items()}

    @property
    def syncs_rose(self) -> bool:
        a, b = self.syncs
        return a is not None and b is not None and b > a

    @property
    def failed(self) -> bool:
        return self.error is not None or self.syncs_rose or any(v.failed for v in self.verdicts.values())

    @property
    def settled(self) -> bool:
        """Nothing more to sample: an error, a rise in syncs, a worse metric, or every metric decided.

        A secondary metric (prefill) that cannot be shown within the gate in the budget is not waited for.
        """
        if self.error is not None or self.syncs_rose or any(v.failed for v in self.verdicts.values()):
            return True
        waited = [g for name, g in self.gates.items() if name == PRIMARY or not g.hopeless()]
        return bool(self.gates) and all(g.done for g in waited)

    def record(self, sides: Sides, threshold: float, versions: dict[str, list[str | None]]) -> ABRecord:
        def nan_none(x: float) -> float | None:
            return None if math.isnan(x) else x

        metrics = {
            name: ABMetric(
                decision=v.decision.value,
                judged=not v.note.startswith("not judged"),
                ratio=nan_none(v.ratio),
                ci_low=nan_none(v.lo),
                ci_high=nan_none(v.hi),
                processes=v.processes,
                pairs=v.n_pairs,
                note=v.note,
            )
            for name, v in self.verdicts.items()
        }
        return ABRecord(
            test=self.nodeid,
            ref=sides.ref,
            a_commit=sides.a_commit,
            b_commit=sides.b_commit,
            a_python=sides.python,
            versions=versions,
            gate_pct=100.0 * threshold,
            failed=self.failed,
            error=self.error,
            metrics=metrics,
            syncs_per_step=list(self.syncs),
        )

    def line(self) -> str:
        """One line: each metric's verdict, the syncs; on a failure, what differed between the environments."""
        if self.error is not None:
            return f"{self.label}: error (fails): {self.error}"
        parts = [f"{METRIC_NAMES.get(k, k)} {v.message()}" for k, v in self.verdicts.items()]
        a, b = self.syncs
        if a is not None and b is not None:
            parts.append(f"syncs/step {a:g} -> {b:g}" + (" (rose: fails)" if b > a else ""))
        if self.differs and self.failed:
            parts.append(f"environment A -> B: {self.differs}")
        return f"{self.label}: " + "; ".join(parts or ["no metric could be timed"])

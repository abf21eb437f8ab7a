"""Two metrics no peer guards: host-device syncs per token, and GPU idle time between steps.

Both come from one extra, untimed generation under ``torch.profiler`` (no nsys needed): syncs are
the CUDA runtime's ``*Synchronize`` calls on the host; idle is the time inside the generation's
device window during which no kernel or copy runs. The baseline stop check shows as one sync and
one idle gap per step; a working pipelined loop keeps the device busy across steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import DecodePerfError
from ..decode.loop import DecodeOutput

SYNC_CALLS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize")
# What drains a stream (a blocking read, .item(), a synchronize), as opposed to the lagged modes'
# cudaEventSynchronize on an event recorded a step earlier, which waits for that step only.
DRAINING_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize")


def compile_counters() -> dict[str, int]:
    """torch._dynamo's running totals: compiled graphs (recompiles add to them), graph breaks, and the
    times a frame hit the recompile limit (dynamo then runs it eager from there on, with a warning)."""
    from torch._dynamo.utils import counters

    return {
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "recompile_limit_hits": int(
            sum(n for msg, n in counters["unimplemented"].items() if "recompile limit exceeded" in msg.lower())
        ),
    }


@dataclass(frozen=True)
class IdleStats:
    busy_us: float
    idle_us: float
    window_us: float

    @property
    def fraction(self) -> float:
        return self.idle_us / self.window_us if self.window_us > 0 else 0.0


def idle_stats(intervals: Iterable[tuple[float, float]]) -> IdleStats:
    """Merge device activity intervals (start, end) and measure the gaps inside their window."""
    spans = sorted((float(s), float(e)) for s, e in intervals if e >= s)
    if not spans:
        return IdleStats(0.0, 0.0, 0.0)
    busy = 0.0
    cur_start, cur_end = spans[0]
    for start, end in spans[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    busy += cur_end - cur_start
    window = spans[-1][1] - spans[0][0]
    window = max(window, max(e for _, e in spans) - spans[0][0])
    return IdleStats(busy, window - busy, window)


@dataclass(frozen=True)
class ProfileStats:
    syncs: int
    tokens: int
    steps: int
    idle: IdleStats
    draining: int = 0  # cudaStreamSynchronize + cudaDeviceSynchronize of them

    @property
    def draining_per_token(self) -> float:
        return self.draining / self.tokens if self.tokens else 0.0

    @property
    def syncs_per_token(self) -> float:
        """Blocking host-device syncs per generated token position (per decode step kept)."""
        return self.syncs / self.tokens if self.tokens else 0.0

    @property
    def idle_us_per_step(self) -> float:
        return self.idle.idle_us / self.steps if self.steps else 0.0

    def fields(self) -> dict[str, Any]:
        """The record's profiler fields (CUDA)."""
        return {
            "syncs_per_token": self.syncs_per_token,
            "draining_syncs_per_token": self.draining_per_token,
            "gpu_idle_fraction": self.idle.fraction,
            "gpu_idle_us_per_step": self.idle_us_per_step,
        }

    @staticmethod
    def absent() -> dict[str, Any]:
        """The profiler fields where no profile ran (not CUDA)."""
        return dict.fromkeys(
            ("syncs_per_token", "draining_syncs_per_token", "gpu_idle_fraction", "gpu_idle_us_per_step")
        )


def _is_device_event(event: Any) -> bool:
    # Kernels and copies are the CUDA-device events (DeviceType.CUDA) of the profile.
    return str(getattr(event, "device_type", "")).endswith("CUDA")


def profile_generation(run_once: Callable[[], DecodeOutput], device: torch.device) -> ProfileStats:
    """Run one generation under the profiler and count its syncs and device idle time."""
    if device.type != "cuda":
        raise DecodePerfError("GPU idle and sync profiling needs CUDA; this run is on " + device.type)
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = run_once()
        torch.cuda.synchronize(device)
    events = list(prof.events())
    syncs = sum(1 for e in events if e.name in SYNC_CALLS)
    draining = sum(1 for e in events if e.name in DRAINING_CALLS)
    intervals = [(e.time_range.start, e.time_range.end) for e in events if _is_device_event(e)]
    # The profiler's own final synchronize is outside the generation: do not count it.
    syncs, draining = max(syncs - 1, 0), max(draining - 1, 0)
    return ProfileStats(syncs, out.new_tokens, out.steps, idle_stats(intervals), draining)


PROFILE_FIELDS = ("syncs_per_token", "draining_syncs_per_token", "gpu_idle_fraction", "gpu_idle_us_per_step")

"""What the device can move: its copy bandwidth, measured once per run, and a step's bytes against it."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch

__all__ = ["MIB", "achieved", "measure_bandwidth"]

MIB = 1 << 20


def measure_bandwidth(device: torch.device | str = "cpu", nbytes: int = 256 * MIB, repeats: int = 5) -> float:
    """Copy bandwidth in bytes/s (read + write counted: 2 x bytes per copy), median over ``repeats``."""
    dev = torch.device(device)
    if nbytes < 4 or repeats < 1:
        raise ValueError("nbytes must be >= 4 and repeats >= 1")
    numel = nbytes // 4
    moved = 2 * numel * 4
    if dev.type == "cpu":
        src = torch.ones(numel, dtype=torch.float32)
        dst = torch.empty_like(src)
        dst.copy_(src)  # warm-up: page in both buffers
        times: list[float] = []
        for _ in range(repeats):
            start = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
    elif dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA bandwidth requested but torch.cuda.is_available() is False")
        src = torch.ones(numel, dtype=torch.float32, device=dev)
        dst = torch.empty_like(src)
        event: Any = torch.cuda.Event  # untyped constructor
        with torch.cuda.device(dev):
            dst.copy_(src)
            torch.cuda.synchronize()
            ms: list[float] = []
            for _ in range(repeats):
                begin = event(enable_timing=True)
                end = event(enable_timing=True)
                begin.record()
                dst.copy_(src)
                end.record()
                end.synchronize()
                ms.append(begin.elapsed_time(end))
        seconds = statistics.median(ms) / 1e3
    else:
        raise ValueError(f"unsupported device type {dev.type!r}")
    if seconds <= 0:
        raise RuntimeError("timer resolution too coarse for this nbytes; increase nbytes")
    return moved / seconds


def achieved(bytes_per_step: float, ms_per_step: float, bandwidth: float) -> tuple[float, float, float]:
    """Return (achieved GB/s, fraction of ``bandwidth`` (bytes/s), roofline floor in ms for ``bytes_per_step``)."""
    if ms_per_step <= 0 or bandwidth <= 0 or not math.isfinite(bandwidth):
        raise ValueError("ms_per_step and bandwidth must be positive and finite")
    rate = bytes_per_step / (ms_per_step / 1e3)
    return rate / 1e9, rate / bandwidth, bytes_per_step / bandwidth * 1e3

"""The GPU idle arithmetic (device-independent) and the CPU guard of the profiler path."""

from __future__ import annotations

import pytest
import torch

from pytest_decodeperf import DecodePerfError
from pytest_decodeperf.engine.measure.profiling import idle_stats, profile_generation


def test_idle_is_the_gaps_between_merged_device_intervals() -> None:
    # Two steps of kernels (overlapping within a step) with a 110 us gap between them.
    stats = idle_stats([(0, 50), (40, 100), (210, 300), (300, 320)])
    assert stats.window_us == 320
    assert stats.busy_us == 100 + 110
    assert stats.idle_us == 110
    assert stats.fraction == pytest.approx(110 / 320)


def test_back_to_back_kernels_have_no_idle_time() -> None:
    stats = idle_stats([(0, 10), (10, 20), (20, 35)])
    assert stats.idle_us == 0 and stats.fraction == 0


def test_no_device_activity_is_an_empty_window() -> None:
    assert idle_stats([]).fraction == 0.0


def test_profiling_refuses_cpu_with_a_reason() -> None:
    with pytest.raises(DecodePerfError, match="needs CUDA"):
        profile_generation(lambda: None, torch.device("cpu"))  # type: ignore[arg-type,return-value]

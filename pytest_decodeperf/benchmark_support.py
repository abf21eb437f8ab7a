"""pytest-benchmark, fed from the rounds the plugin measured (no second decode), when it is active.

Each item's timed rounds go to ``--benchmark-json`` / ``--benchmark-autosave`` with the record's
metrics in ``extra_info``, so ``--benchmark-compare`` works. Its own table repeats ours in other units:
it prints only on request (``--decodeperf-benchmark-table`` or ``--benchmark-histogram``), through its
own quiet switch, so ``--benchmark-compare-fail`` still fails a run. Private attributes of
pytest-benchmark are used here (``_benchmarksession``, ``_mode``, ``_make_stats``): its version is capped.
"""

from __future__ import annotations

from typing import Any

import pytest

from .records import ResultRecord


def benchmark_fed(config: pytest.Config, show_table: bool) -> bool:
    """Whether this session's decode perf items feed pytest-benchmark (it is active); quiets its table."""
    bs: Any = getattr(config, "_benchmarksession", None)
    if bs is None or bs.disabled:
        return False
    if not show_table and not bs.histogram:
        bs.quiet = True  # its --benchmark-quiet: saving and --benchmark-compare-fail still run
    return True


def feed_pytest_benchmark(item: pytest.Item, record: ResultRecord) -> None:
    """Hand the rounds already measured to pytest-benchmark (no second run), when it is on."""
    bs = getattr(item.config, "_benchmarksession", None)
    bench = getattr(item, "funcargs", {}).get("benchmark")
    if bs is None or bs.disabled or bs.skip or bench is None:
        return
    bench._mode = "pytest-decodeperf"  # the fixture allows one use; this is it
    bench.group = f"{record['model']}-{record['cache']}-b{record['batch_size']}-n{record['new_tokens']}"
    stats = bench._make_stats(1)
    for seconds in record["samples_s"]:
        stats.update(seconds)
    bench.extra_info.update({k: val for k, val in record.items() if not k.startswith("samples")})

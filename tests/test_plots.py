"""The PNG figures: which are written for which records, and that none of them crashes on thin data."""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_decodeperf.errors import DecodePerfError
from pytest_decodeperf.plot_roofline import ROOFLINE_PNG
from pytest_decodeperf.plots import (
    MEMORY_PNG,
    MISSING_MATPLOTLIB,
    SPEEDUP_PNG,
    TOKENS_PNG,
    skipped_plots,
    tokens_per_s_iqr,
    write_plots,
)
from pytest_decodeperf.records import ResultRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GAIN = {"baseline": 1.0, "deferred": 1.04, "pipelined": 1.1, "nostop": 1.12, "hf-generate": 0.9}


def record(
    stream: str = "baseline", cache: str = "dynamic", batch_size: int = 1, device: str = "cpu", **over: Any
) -> ResultRecord:
    """A plausible record: tokens/s grows with the batch, each mode a fixed factor over baseline."""
    tps = 1000.0 * batch_size**0.8 * GAIN.get(stream, 1.0)
    generated = 30
    tokens = generated * batch_size
    samples = [tokens / (tps * f) for f in (0.95, 0.98, 1.0, 1.02, 1.05)]
    cuda = device == "cuda"
    rec: dict[str, Any] = {
        "test": f"perf_tests/test_x.py::test_decode[{cache}-{stream}-b{batch_size}]",
        "model": "tiny-gpt2",
        "cache": cache,
        "stream": stream,
        "batch_size": batch_size,
        "new_tokens": 32,
        "stop": "eos",
        "compile": False,
        "dtype": "float16" if cuda else "float32",
        "device": device,
        "parity": "n/a" if stream == "baseline" else "pass",
        "tokens_per_s": tps,
        "ms_per_token": 1000.0 * batch_size / tps,
        "prefill_ms": 2.0,
        "steps": generated + 1,
        "extra_steps": 0,
        "generated_tokens": generated,
        "peak_allocated_bytes": (200 + 10 * batch_size) * 2**20 if cuda else None,
        "peak_reserved_bytes": (260 + 12 * batch_size) * 2**20 if cuda else None,
        "rounds": len(samples),
        "warmup_s": [0.5],
        "samples_s": samples,
        "samples_ms_per_token": [],
        "samples_prefill_ms": [],
        "spread_pct": 5.0,
        "note": "",
        # the roofline: a 0.2 ms floor at 10 GB/s
        "bandwidth_gb_per_s": 10.0,
        "floor_ms_per_step": 0.2,
        "bytes_per_step": 2e6,
        "bw_fraction": 0.2 / (1000.0 * batch_size / tps),
    }
    rec.update(over)
    return rec  # type: ignore[return-value]


def matrix(device: str) -> list[ResultRecord]:
    return [
        record(stream, cache, batch, device)
        for cache in ("none", "dynamic", "static")
        for batch in (1, 4, 16)
        for stream in ("baseline", "deferred", "pipelined", "nostop")
    ]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output folder, for tests that draw (and so need matplotlib, the ``plot`` extra)."""
    pytest.importorskip("matplotlib")
    return tmp_path


def test_cuda_records_give_all_four_figures_as_valid_pngs(out: Path) -> None:
    written = write_plots(matrix("cuda"), out / "plots")

    assert [p.name for p in written] == [TOKENS_PNG, SPEEDUP_PNG, MEMORY_PNG, ROOFLINE_PNG]
    for path in written:
        assert path.parent == out / "plots"
        assert path.stat().st_size > 10_000, f"{path.name} is suspiciously small"
        width, height = png_size(path)
        assert 400 < width < 4000 and 300 < height < 8000, (path.name, width, height)


def test_cpu_records_skip_the_memory_figure_and_say_why(out: Path) -> None:
    records = matrix("cpu")

    written = write_plots(records, out)

    assert [p.name for p in written] == [TOKENS_PNG, SPEEDUP_PNG, ROOFLINE_PNG]
    assert not (out / MEMORY_PNG).exists()
    assert skipped_plots(records) == {MEMORY_PNG: "no CUDA memory stats (device: cpu)"}


def test_a_single_record_gives_the_throughput_figure_only(out: Path) -> None:
    records = [record()]

    written = write_plots(records, out)

    assert [p.name for p in written] == [TOKENS_PNG, ROOFLINE_PNG]
    assert png_size(written[0])[0] > 0
    assert set(skipped_plots(records)) == {SPEEDUP_PNG, MEMORY_PNG}
    assert "baseline" in skipped_plots(records)[SPEEDUP_PNG]


def test_no_records_write_nothing_and_do_not_fail(out: Path) -> None:
    assert write_plots([], out / "empty") == []
    assert list((out / "empty").iterdir()) == []


def test_thin_or_broken_records_are_drawn_or_skipped_without_crashing(out: Path) -> None:
    records = [
        record("baseline", samples_s=[]),  # no rounds: no error bar
        record("nostop", samples_s=[0.0, 0.01]),  # a zero-second round is ignored
        record("deferred", generated_tokens=0),  # nothing kept: no error bar
        record("pipelined", tokens_per_s=math.nan),  # left out
        record("baseline", batch_size=4, tokens_per_s=0.0),  # a zero baseline gives no speedup
        record("pipelined", batch_size=4),
        record("hf-generate", cache="mystery-cache", device="cuda", peak_reserved_bytes=None),
    ]

    written = write_plots(records, out)

    assert [p.name for p in written] == [TOKENS_PNG, SPEEDUP_PNG, MEMORY_PNG, ROOFLINE_PNG]


def test_wide_speedup_ranges_and_mixed_settings_still_draw(out: Path) -> None:
    records = matrix("cuda")
    records += [record(s, "static", b, "cuda", compile=True) for s in ("baseline", "pipelined") for b in (1, 8)]
    records += [record("baseline", "none", 2, "cuda", tokens_per_s=3.0), record("deferred", "none", 2, "cuda")]
    records += [record(s, model="tiny-llama-gqa", device="cuda") for s in ("baseline", "pipelined")]

    written = write_plots(records, out)

    assert [p.name for p in written] == [TOKENS_PNG, SPEEDUP_PNG, MEMORY_PNG, ROOFLINE_PNG]


def test_error_bars_span_the_rounds_interquartile_range_around_the_median() -> None:
    rec = record(batch_size=2)
    rates = sorted(rec["generated_tokens"] * 2 / s for s in rec["samples_s"])

    iqr = tokens_per_s_iqr(rec)

    assert iqr is not None
    assert iqr[0] == pytest.approx(rates[1])  # inclusive quartiles of five values: the 2nd and 4th
    assert iqr[1] == pytest.approx(rates[3])
    assert iqr[0] < rec["tokens_per_s"] < iqr[1]
    assert tokens_per_s_iqr(record(samples_s=[])) is None


def test_write_plots_leaves_the_matplotlib_backend_and_settings_alone(out: Path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    settings = dict(matplotlib.rcParams)

    write_plots(matrix("cuda"), out)

    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == settings


def test_missing_matplotlib_names_the_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError

    with pytest.raises(DecodePerfError) as info:
        write_plots([record()], tmp_path)

    assert str(info.value) == "--decodeperf-plot needs matplotlib: pip install 'pytest-decodeperf[plot]'"
    assert str(info.value) == MISSING_MATPLOTLIB
    assert list(tmp_path.iterdir()) == []


def test_the_speedup_figure_shows_exactly_the_tables_vs_baseline_ratios() -> None:
    """Two tests measure the same config with different baselines: each ratio is over its own test's baseline."""
    pytest.importorskip("matplotlib")
    from pytest_decodeperf.plots import _speedup_figure
    from pytest_decodeperf.report import render_table

    other = "perf_tests/test_y.py::test_decode[{}]"
    records = [
        *matrix("cpu")[:8],
        # A second test of the same model, cache and batch, whose baseline ran at half the speed.
        record("baseline", test=other.format("b"), tokens_per_s=500.0),
        record("pipelined", test=other.format("p"), tokens_per_s=600.0),
    ]
    table = render_table(records)
    header = next(line for line in table.splitlines() if line.startswith("model") and "vs baseline" in line)
    start = header.index("vs baseline")
    table_ratios = sorted(
        float(cell.rstrip("x"))
        for line in table.splitlines()
        if (cell := line[start : start + len("vs baseline")].strip()).endswith("x") and "baseline" not in line
    )
    fig = _speedup_figure(records)
    figure_ratios = sorted(
        round(float(y), 3)
        for ax in fig.axes
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
        for y in line.get_ydata()
    )
    assert figure_ratios == table_ratios
    assert 1.2 in figure_ratios  # test_y's pipelined over test_y's own baseline, not test_x's


def with_roofline(rec: ResultRecord, floor_ms: float = 0.2) -> ResultRecord:
    """A record with the engine's roofline fields: bandwidth 10 GB/s, ``floor_ms`` a step."""
    bandwidth = 10.0
    extra: dict[str, Any] = {
        "bandwidth_gb_per_s": bandwidth,
        "floor_ms_per_step": floor_ms,
        "bytes_per_step": floor_ms / 1e3 * bandwidth * 1e9,
        "bw_fraction": floor_ms / rec["ms_per_token"],
    }
    return {**rec, **extra}  # type: ignore[typeddict-item]


def test_the_roofline_figure_draws_each_variants_step_and_floor(out: Path) -> None:
    from pytest_decodeperf.plot_roofline import roofline_figure

    records = [with_roofline(r, floor_ms=0.1 * (i + 1)) for i, r in enumerate(matrix("cpu")[:6])]
    assert ROOFLINE_PNG in [p.name for p in write_plots(records, out)]
    assert png_size(out / ROOFLINE_PNG)[0] > 400
    fig = roofline_figure(records)
    ax = fig.axes[0]
    bars = sorted(round(patch.get_width(), 6) for patch in ax.patches)
    assert bars == sorted(round(r["ms_per_token"], 6) for r in records)
    floors = sorted(round(float(x), 6) for x, _ in ax.collections[0].get_offsets())
    assert floors == sorted(round(float(r["floor_ms_per_step"] or 0), 6) for r in records)
    texts = [t.get_text().strip() for t in ax.texts]
    assert f"{100 * (records[0]['bw_fraction'] or 0):.1f}% bw" in texts


def test_records_without_a_roofline_skip_that_figure_and_say_why(out: Path) -> None:
    old = [record(floor_ms_per_step=None, bw_fraction=None, bytes_per_step=None) for _ in range(2)]
    reason = skipped_plots(old)[ROOFLINE_PNG]
    assert "no record has a roofline floor" in reason
    assert ROOFLINE_PNG not in [p.name for p in write_plots(old, out)]

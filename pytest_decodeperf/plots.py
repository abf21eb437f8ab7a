"""PNG figures of a run's records, for ``--decodeperf-plot DIR``.

Four questions a reader brings to a decode benchmark, one figure each:

* ``tokens_per_s.png``: how fast is each variant, and how steady was it across rounds?
* ``speedup_vs_batch.png``: what does each stop-check mode buy over the blocking baseline, and how
  does that gain shrink as the batch grows (the article's "pipelining gain vs batch size")?
* ``memory_per_cache.png``: what does each KV cache type cost in CUDA memory?
* ``roofline.png``: how far is each decode step from its memory-bandwidth floor (``plot_roofline.py``)?

matplotlib is optional, so it is imported inside :func:`write_plots`. Figures are drawn on
``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``: no global backend switch
and no figure registry that could leak into the user's own tests. A figure without data is skipped
with a reason (see :func:`skipped_plots`), never drawn empty and never an error.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DecodePerfError
from .plot_roofline import ROOFLINE_PNG, roofline_figure, roofline_records
from .plot_style import (
    CACHE_COLORS,
    CONFIG_FIELDS,
    LINE_STYLES,
    MARKERS,
    MODE_COLORS,
    STYLE,
    add_context,
    color_of,
    config_sort,
    describe,
    gain_pct,
    group_label,
    is_number,
    patch_legend,
    quartiles,
    si,
    speedup_axis,
    varying_fields,
)
from .records import ResultRecord
from .report import CACHE_ORDER, STREAM_ORDER, rank, speedups

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MISSING_MATPLOTLIB = "--decodeperf-plot needs matplotlib: pip install 'pytest-decodeperf[plot]'"

_log = logging.getLogger(__name__)

TOKENS_PNG = "tokens_per_s.png"
SPEEDUP_PNG = "speedup_vs_batch.png"
MEMORY_PNG = "memory_per_cache.png"


def tokens_per_s_iqr(record: ResultRecord) -> tuple[float, float] | None:
    """The (q1, q3) interval of tokens/s over rounds, placed around the record's median.

    The quartiles are taken relative to the rounds' own median and rescaled to ``tokens_per_s``, so
    the bar stays centred on the plotted value even where the record's median is taken on another
    time base (decode steps only, say) than whole-round wall time. None with no usable rounds.
    """
    tokens = record["generated_tokens"] * record["batch_size"]  # every row's kept tokens
    rates = [tokens / s for s in record["samples_s"] if s > 0]
    median = record["tokens_per_s"]
    if not rates or not is_number(median):
        return None
    mid = statistics.median(rates)
    if mid <= 0:
        return None
    q1, q3 = (rates[0], rates[0]) if len(rates) == 1 else quartiles(rates)
    return median * q1 / mid, median * q3 / mid


def skipped_plots(records: Sequence[ResultRecord]) -> dict[str, str]:
    """File name -> why that figure has no data, for the figures :func:`write_plots` would skip."""
    skipped: dict[str, str] = {}
    if not _throughput_records(records):
        skipped[TOKENS_PNG] = "no record has a tokens/s value"
    if not _speedups(records):
        skipped[SPEEDUP_PNG] = "no variant has a baseline run of the same config to compare with"
    if not _memory_records(records):
        devices = sorted({r["device"] for r in records}) or ["no records"]
        skipped[MEMORY_PNG] = f"no CUDA memory stats (device: {', '.join(devices)})"
    if not roofline_records(records):
        skipped[ROOFLINE_PNG] = "no record has a roofline floor (records older than pytest-decodeperf 0.2?)"
    return skipped


def write_plots(records: list[ResultRecord], out_dir: Path) -> list[Path]:
    """Write the figures that have data into ``out_dir``; return their paths, in a fixed order."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as exc:
        raise DecodePerfError(MISSING_MATPLOTLIB) from exc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = skipped_plots(records)
    drawers: dict[str, Callable[[Sequence[ResultRecord]], Figure]] = {
        TOKENS_PNG: _tokens_figure,
        SPEEDUP_PNG: _speedup_figure,
        MEMORY_PNG: _memory_figure,
        ROOFLINE_PNG: roofline_figure,
    }
    written: list[Path] = []
    for name, draw in drawers.items():
        if name in skipped:
            _log.info("decodeperf: skipped %s: %s", name, skipped[name])
            continue
        with matplotlib.rc_context(STYLE):  # restored on exit: the user's own settings are untouched
            fig = draw(records)
            FigureCanvasAgg(fig)  # attaches itself to fig: savefig renders with Agg, whatever the backend
            fig.savefig(out_dir / name)
        written.append(out_dir / name)
    return written


# -- tokens/s per variant ------------------------------------------------------------------------


def _tokens_figure(records: Sequence[ResultRecord]) -> Figure:
    from matplotlib.figure import Figure

    recs = _throughput_records(records)
    labelled = varying_fields(recs, ("model", "cache", *CONFIG_FIELDS))
    groups: dict[tuple[Any, ...], list[ResultRecord]] = defaultdict(list)
    for r in recs:
        groups[_config_key(r)].append(r)

    # Bars top to bottom: groups in reading order, stream modes in reading order inside a group.
    ys: list[float] = []
    bars: list[ResultRecord] = []
    centers: list[float] = []
    labels: list[str] = []
    y = 0.0
    for key in sorted(groups, key=config_sort):
        members = sorted(groups[key], key=lambda r: rank(STREAM_ORDER, r["stream"]))
        centers.append(y + (len(members) - 1) / 2)
        labels.append(group_label(members[0], labelled))
        for r in members:
            ys.append(y)
            bars.append(r)
            y += 1.0
        y += 0.8  # the gap that tells one group from the next

    values = [r["tokens_per_s"] for r in bars]
    iqrs = [tokens_per_s_iqr(r) for r in bars]
    low = [max(v - iqr[0], 0.0) if iqr else 0.0 for v, iqr in zip(values, iqrs, strict=True)]
    high = [max(iqr[1] - v, 0.0) if iqr else 0.0 for v, iqr in zip(values, iqrs, strict=True)]
    ends = [v + h for v, h in zip(values, high, strict=True)]
    # Batch sizes spread throughput over decades: a linear axis would flatten the small batches.
    log_x = min(values) > 0 and max(values) / min(values) > 30
    speedups = {id(r): speedup for r, speedup in _speedups(bars)}

    fig = Figure(figsize=(10, 1.7 + 0.24 * len(bars) + 0.18 * len(groups)))
    ax = fig.add_subplot()
    colors = [color_of(MODE_COLORS, r["stream"]) for r in bars]
    ax.barh(ys, values, height=0.8, color=colors, xerr=[low, high], error_kw={"ecolor": "#333", "capsize": 2})
    for yy, end, r in zip(ys, ends, bars, strict=True):
        text = si(r["tokens_per_s"])
        if id(r) in speedups:
            gain = gain_pct(speedups[id(r)])
            text += f"  ({gain:+.0f} %)" if abs(gain) >= 100 else f"  ({gain:+.1f} %)"
        if r["parity"] == "fail":
            text += "  parity FAIL"
        ax.text(end, yy, "  " + text, va="center", fontsize=8, color="#b00020" if "FAIL" in text else "#222222")
    ax.set_yticks(centers, labels)
    ax.set_ylim(ys[-1] + 0.7, -0.7)  # inverted: first group on top
    if log_x:
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 1.6, max(ends) * 2.4)
    else:
        ax.set_xlim(0, max(ends) * 1.3 if max(ends) > 0 else 1.0)
    ax.set_xlabel("decode throughput, tokens/s (median over rounds" + (", log scale)" if log_x else ")"))
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", which="minor" if log_x else "major", alpha=0.12 if log_x else 0.3)
    ax.set_title(
        "Decode throughput per variant\nerror bars: interquartile range over timed rounds"
        + ("; (%): gain over the group's baseline" if speedups else ""),
        fontsize=11,
    )
    add_context(fig, recs, ("model", "cache", *CONFIG_FIELDS))
    modes = sorted({r["stream"] for r in bars}, key=lambda m: rank(STREAM_ORDER, m))
    patch_legend(fig, "stream mode", {m: color_of(MODE_COLORS, m) for m in modes})
    return fig


# -- speedup vs batch size -----------------------------------------------------------------------


def _speedup_figure(records: Sequence[ResultRecord]) -> Figure:
    from matplotlib.figure import Figure

    points = _speedups(records)
    caches = sorted({r["cache"] for r, _ in points}, key=lambda c: rank(CACHE_ORDER, c))
    models = sorted({r["model"] for r, _ in points})
    varying = varying_fields([r for r, _ in points], CONFIG_FIELDS)
    # One line per (cache, stream mode, model, other settings); points are (batch size, speedup).
    lines: dict[tuple[tuple[int, str], tuple[int, str], str, str], list[tuple[int, float]]] = defaultdict(list)
    for r, speedup in points:
        key = (rank(CACHE_ORDER, r["cache"]), rank(STREAM_ORDER, r["stream"]), r["model"], describe(r, varying))
        lines[key].append((r["batch_size"], speedup))
    variants = sorted({key[3] for key in lines})

    ncols = min(len(caches), 3)
    nrows = math.ceil(len(caches) / ncols)
    fig = Figure(figsize=(4.6 * ncols + 2.2, 3.8 * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    by_cache = {c: axes[i // ncols][i % ncols] for i, c in enumerate(caches)}
    for ax in list(axes.flat)[len(caches) :]:
        ax.set_visible(False)

    log_y, (y_lo, y_hi) = speedup_axis(axes[0][0], [s for _, s in points])
    handles: dict[str, Any] = {}
    off_chart: dict[str, list[str]] = defaultdict(list)
    for ((_, cache), (_, stream), model, extra), pts in sorted(lines.items()):
        # Colour: stream mode; marker: model; line style: other settings (compiled, dtype...).
        marker = MARKERS[models.index(model) % len(MARKERS)]
        style = LINE_STYLES[variants.index(extra) % len(LINE_STYLES)]
        label = ", ".join(w for w in (stream, model if len(models) > 1 else "", extra) if w)
        # Nudge each model sideways (a tenth of an octave) so equal points stay visible.
        nudge = 2 ** (0.15 * (models.index(model) - (len(models) - 1) / 2))
        pts.sort()
        xs, ys = [b * nudge for b, _ in pts], [min(max(s, y_lo), y_hi) for _, s in pts]
        (line,) = by_cache[cache].plot(
            xs,
            ys,
            style,
            marker=marker,
            label=label,
            color=color_of(MODE_COLORS, stream),
            markerfacecolor="white" if marker != "o" else color_of(MODE_COLORS, stream),
        )
        handles.setdefault(label, line)
        # Off the chart: pinned to the edge with an arrowhead; the subplot title names the true value.
        for x, y, (b, s) in zip(xs, ys, pts, strict=True):
            if y != s:
                up = s > y
                by_cache[cache].plot(x, y, "^" if up else "v", color=line.get_color(), markersize=9, clip_on=False)
                off_chart[cache].append(f"{'▲' if up else '▼'} {label}, b{b}: {s:.3g}×")

    for cache, ax in by_cache.items():
        batches = sorted({r["batch_size"] for r, _ in points if r["cache"] == cache})
        ax.axhline(1.0, color=MODE_COLORS["baseline"], linewidth=1.2, linestyle="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlim(batches[0] / 1.5, batches[-1] * 1.5)
        notes = off_chart[cache][:3] + [f"and {len(off_chart[cache]) - 3} more"] * (len(off_chart[cache]) > 3)
        ax.set_title("\n".join([f"{cache} KV cache", *notes]))
        ax.set_xlabel("batch size (rows)")
        ax.yaxis.set_tick_params(labelleft=True)
    for row in axes:
        row[0].set_ylabel("tokens/s ÷ baseline tokens/s (log scale)" if log_y else "tokens/s gain over baseline (%)")
    fig.suptitle(
        "Gain of each stop-check stream mode over the blocking baseline, by batch size\n"
        "same model, cache, batch and length; dashed line: the baseline"
    )
    add_context(fig, [r for r, _ in points], ("model", *CONFIG_FIELDS))
    title = ", ".join(["stream mode", *(["model"] if len(models) > 1 else []), *varying])
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", handlelength=3.5, title=title)
    return fig


# -- CUDA memory per cache type ------------------------------------------------------------------


def _memory_figure(records: Sequence[ResultRecord]) -> Figure:
    from matplotlib.figure import Figure

    recs = _memory_records(records)
    models = sorted({r["model"] for r in recs})
    caches = sorted({r["cache"] for r in recs}, key=lambda c: rank(CACHE_ORDER, c))
    peak = max(max(r["peak_reserved_bytes"] or 0, r["peak_allocated_bytes"] or 0) for r in recs)
    unit, scale = ("GiB", 2**30) if peak >= 2**30 else ("MiB", 2**20)

    fig = Figure(figsize=(max(6.0, 5.0 * len(models)) + 1.6, 4.4))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    width = 0.8 / len(caches)
    for ax, model in zip(axes, models, strict=True):
        mine = [r for r in recs if r["model"] == model]
        batches = sorted({r["batch_size"] for r in mine})
        for ci, cache in enumerate(caches):
            xs, alloc, reserved = [], [], []
            for bi, b in enumerate(batches):
                cell = [r for r in mine if r["cache"] == cache and r["batch_size"] == b]
                if not cell:
                    continue
                xs.append(bi - 0.4 + width * (ci + 0.5))
                alloc.append(max(r["peak_allocated_bytes"] or 0 for r in cell) / scale)
                reserved.append(max(r["peak_reserved_bytes"] or 0 for r in cell) / scale)
            color = color_of(CACHE_COLORS, cache)
            ax.bar(xs, reserved, width * 0.92, color=color, alpha=0.3, edgecolor=color)
            ax.bar(xs, alloc, width * 0.92, color=color, label=cache)
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_xlabel("batch size (rows)")
        ax.set_ylabel(f"peak CUDA memory ({unit})")
        ax.set_title(model)
        ax.grid(axis="x", visible=False)
    fig.suptitle(
        "Peak CUDA memory per KV cache type (each bar: the largest of its runs)\n"
        "solid: allocated by tensors; light: reserved by the caching allocator"
    )
    add_context(fig, recs, CONFIG_FIELDS)
    patch_legend(fig, "KV cache", {c: color_of(CACHE_COLORS, c) for c in caches})
    return fig


# -- data selection ------------------------------------------------------------------------------


def _throughput_records(records: Sequence[ResultRecord]) -> list[ResultRecord]:
    return [r for r in records if is_number(r.get("tokens_per_s"))]


def _memory_records(records: Sequence[ResultRecord]) -> list[ResultRecord]:
    return [r for r in records if (r.get("peak_allocated_bytes"), r.get("peak_reserved_bytes")) != (None, None)]


def _speedups(records: Sequence[ResultRecord]) -> list[tuple[ResultRecord, float]]:
    """(record, its tokens/s over the baseline's) for each non-baseline record with a baseline twin.

    The table's grouping (``report.speedups``): the figure shows exactly the table's ratios.
    """
    return [
        (r, s) for r, s in zip(records, speedups(records), strict=True) if r["stream"] != "baseline" and s is not None
    ]


def _config_key(r: ResultRecord) -> tuple[Any, ...]:
    return (r["model"], r["cache"], r["batch_size"], *[r.get(f) for f in CONFIG_FIELDS])

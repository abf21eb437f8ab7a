"""PNG figures of a run's records, for ``--decodeperf-plot DIR``.

Three questions a reader brings to a decode benchmark, one figure each:

* ``tokens_per_s.png``: how fast is each variant, and how steady was it across rounds?
* ``speedup_vs_batch.png``: what does each stop-check mode buy over the blocking baseline, and how
  does that gain shrink as the batch grows (the seed article's "pipelining gain vs batch size")?
* ``memory_per_cache.png``: what does each KV cache type cost in CUDA memory?

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
from .records import ResultRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MISSING_MATPLOTLIB = "--decodeperf-plot needs matplotlib: pip install 'pytest-decodeperf[plot]'"

TOKENS_PNG = "tokens_per_s.png"
SPEEDUP_PNG = "speedup_vs_batch.png"
MEMORY_PNG = "memory_per_cache.png"

_log = logging.getLogger(__name__)

# One colour per stream mode in every figure, in the order a reader compares them (baseline first).
# Kept here rather than read from stops.py so replotting a JSON file needs no torch.
_MODE_COLORS = {
    "baseline": "#7f7f7f",
    "deferred": "#1f77b4",
    "pipelined": "#ff7f0e",
    "nostop": "#2ca02c",
    "hf-generate": "#9467bd",
    "hf-deferred": "#8c564b",
}
_SPARE_COLORS = ["#e377c2", "#bcbd22", "#17becf", "#d62728", "#393b79", "#637939"]
_CACHE_ORDER = ["none", "dynamic", "static"]
_CACHE_COLORS = {"none": "#a6761d", "dynamic": "#1b9e77", "static": "#7570b3"}
_LINE_STYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P"]

# Shared look of every figure: fonts, legends without frames, light grids, room made by the layout.
_STYLE: dict[Any, Any] = {
    "figure.constrained_layout.use": True,
    "figure.titlesize": 11,
    "axes.titlesize": 10,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.title_fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "savefig.dpi": 110,
}

# Record fields that, besides model / cache / batch / stream, tell two variants apart.
_CONFIG_FIELDS = ("new_tokens", "stop", "compile", "dtype", "device")


def tokens_per_s_iqr(record: ResultRecord) -> tuple[float, float] | None:
    """The (q1, q3) interval of tokens/s over rounds, placed around the record's median.

    The quartiles are taken relative to the rounds' own median and rescaled to ``tokens_per_s``, so
    the bar stays centred on the plotted value even where the record's median is taken on another
    time base (decode steps only, say) than whole-round wall time. None with no usable rounds.
    """
    tokens = record["generated_tokens"] * record["batch_size"]  # every row's kept tokens
    rates = [tokens / s for s in record["samples_s"] if s > 0]
    median = record["tokens_per_s"]
    if not rates or not _is_number(median):
        return None
    mid = statistics.median(rates)
    if mid <= 0:
        return None
    q1, q3 = (rates[0], rates[0]) if len(rates) == 1 else _quartiles(rates)
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
    }
    written: list[Path] = []
    for name, draw in drawers.items():
        if name in skipped:
            _log.info("decodeperf: skipped %s: %s", name, skipped[name])
            continue
        with matplotlib.rc_context(_STYLE):  # restored on exit: the user's own settings are untouched
            fig = draw(records)
            FigureCanvasAgg(fig)  # attaches itself to fig: savefig renders with Agg, whatever the backend
            fig.savefig(out_dir / name)
        written.append(out_dir / name)
    return written


# -- tokens/s per variant ------------------------------------------------------------------------


def _tokens_figure(records: Sequence[ResultRecord]) -> Figure:
    from matplotlib.figure import Figure

    recs = _throughput_records(records)
    labelled = _varying(recs, ("model", "cache", *_CONFIG_FIELDS))
    groups: dict[tuple[Any, ...], list[ResultRecord]] = defaultdict(list)
    for r in recs:
        groups[_config_key(r)].append(r)

    # Bars top to bottom: groups in reading order, stream modes in reading order inside a group.
    ys: list[float] = []
    bars: list[ResultRecord] = []
    centers: list[float] = []
    labels: list[str] = []
    y = 0.0
    for key in sorted(groups, key=_config_sort):
        members = sorted(groups[key], key=lambda r: _rank(_MODE_COLORS, r["stream"]))
        centers.append(y + (len(members) - 1) / 2)
        labels.append(_group_label(members[0], labelled))
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
    colors = [_color(_MODE_COLORS, r["stream"]) for r in bars]
    ax.barh(ys, values, height=0.8, color=colors, xerr=[low, high], error_kw={"ecolor": "#333", "capsize": 2})
    for yy, end, r in zip(ys, ends, bars, strict=True):
        text = _si(r["tokens_per_s"])
        if id(r) in speedups:
            gain = _gain_pct(speedups[id(r)])
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
    _add_context(fig, recs, ("model", "cache", *_CONFIG_FIELDS))
    modes = sorted({r["stream"] for r in bars}, key=lambda m: _rank(_MODE_COLORS, m))
    _patch_legend(fig, "stream mode", {m: _color(_MODE_COLORS, m) for m in modes})
    return fig


# -- speedup vs batch size -----------------------------------------------------------------------


def _speedup_figure(records: Sequence[ResultRecord]) -> Figure:
    from matplotlib.figure import Figure

    points = _speedups(records)
    caches = sorted({r["cache"] for r, _ in points}, key=lambda c: _rank(_CACHE_ORDER, c))
    models = sorted({r["model"] for r, _ in points})
    varying = _varying([r for r, _ in points], _CONFIG_FIELDS)
    # One line per (cache, stream mode, model, other settings); points are (batch size, speedup).
    lines: dict[tuple[tuple[int, str], tuple[int, str], str, str], list[tuple[int, float]]] = defaultdict(list)
    for r, speedup in points:
        key = (_rank(_CACHE_ORDER, r["cache"]), _rank(_MODE_COLORS, r["stream"]), r["model"], _describe(r, varying))
        lines[key].append((r["batch_size"], speedup))
    variants = sorted({key[3] for key in lines})

    ncols = min(len(caches), 3)
    nrows = math.ceil(len(caches) / ncols)
    fig = Figure(figsize=(4.6 * ncols + 2.2, 3.8 * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    by_cache = {c: axes[i // ncols][i % ncols] for i, c in enumerate(caches)}
    for ax in list(axes.flat)[len(caches) :]:
        ax.set_visible(False)

    log_y, (y_lo, y_hi) = _speedup_axis(axes[0][0], [s for _, s in points])
    handles: dict[str, Any] = {}
    off_chart: dict[str, list[str]] = defaultdict(list)
    for ((_, cache), (_, stream), model, extra), pts in sorted(lines.items()):
        # Colour: stream mode; marker: model; line style: other settings (compiled, dtype...).
        marker = _MARKERS[models.index(model) % len(_MARKERS)]
        style = _LINE_STYLES[variants.index(extra) % len(_LINE_STYLES)]
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
            color=_color(_MODE_COLORS, stream),
            markerfacecolor="white" if marker != "o" else _color(_MODE_COLORS, stream),
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
        ax.axhline(1.0, color=_MODE_COLORS["baseline"], linewidth=1.2, linestyle="--")
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
    _add_context(fig, [r for r, _ in points], ("model", *_CONFIG_FIELDS))
    title = ", ".join(["stream mode", *(["model"] if len(models) > 1 else []), *varying])
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", handlelength=3.5, title=title)
    return fig


# -- CUDA memory per cache type ------------------------------------------------------------------


def _memory_figure(records: Sequence[ResultRecord]) -> Figure:
    from matplotlib.figure import Figure

    recs = _memory_records(records)
    models = sorted({r["model"] for r in recs})
    caches = sorted({r["cache"] for r in recs}, key=lambda c: _rank(_CACHE_ORDER, c))
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
            color = _color(_CACHE_COLORS, cache)
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
    _add_context(fig, recs, _CONFIG_FIELDS)
    _patch_legend(fig, "KV cache", {c: _color(_CACHE_COLORS, c) for c in caches})
    return fig


# -- data selection ------------------------------------------------------------------------------


def _throughput_records(records: Sequence[ResultRecord]) -> list[ResultRecord]:
    return [r for r in records if _is_number(r.get("tokens_per_s"))]


def _memory_records(records: Sequence[ResultRecord]) -> list[ResultRecord]:
    return [r for r in records if (r.get("peak_allocated_bytes"), r.get("peak_reserved_bytes")) != (None, None)]


def _speedups(records: Sequence[ResultRecord]) -> list[tuple[ResultRecord, float]]:
    """(record, its tokens/s over the baseline's) for each non-baseline record with a baseline twin."""
    recs = _throughput_records(records)
    baselines: dict[tuple[Any, ...], float] = {}
    for r in recs:
        if r["stream"] == "baseline" and r["tokens_per_s"] > 0:
            baselines.setdefault(_config_key(r), r["tokens_per_s"])
    return [
        (r, r["tokens_per_s"] / baselines[_config_key(r)])
        for r in recs
        if r["stream"] != "baseline" and r["tokens_per_s"] > 0 and _config_key(r) in baselines
    ]


def _config_key(r: ResultRecord) -> tuple[Any, ...]:
    return (r["model"], r["cache"], r["batch_size"], *[r.get(f) for f in _CONFIG_FIELDS])


def _varying(records: Sequence[ResultRecord], fields: Sequence[str]) -> list[str]:
    """The fields that differ between records: only those are worth a label."""
    return [f for f in fields if len({repr(r.get(f)) for r in records}) > 1]


# -- labels and styling --------------------------------------------------------------------------


def _config_sort(key: tuple[Any, ...]) -> tuple[Any, ...]:
    model, cache, batch_size, *rest = key
    return (model, _rank(_CACHE_ORDER, cache), batch_size, *[repr(v) for v in rest])


def _group_label(r: ResultRecord, labelled: Sequence[str]) -> str:
    """``b8`` plus whatever else differs between groups, e.g. ``gpt2 · static · b8``."""
    head = [str(r.get(f)) for f in ("model", "cache") if f in labelled]
    extra = _describe(r, [f for f in _CONFIG_FIELDS if f in labelled])
    return " · ".join([*head, f"b{r['batch_size']}"]) + (f"\n{extra}" if extra else "")


def _describe(r: ResultRecord, fields: Sequence[str]) -> str:
    """The values of ``fields`` in words: ``64 new tokens, compiled, float16``."""
    return ", ".join(_WORDS.get(f, str)(r.get(f)) for f in fields)


_WORDS: dict[str, Callable[[Any], str]] = {
    "compile": lambda v: "compiled" if v else "eager",
    "new_tokens": "{} new tokens".format,
    "stop": "stop={}".format,
    "cache": "{} KV cache".format,
}


def _add_context(fig: Figure, records: Sequence[ResultRecord], fields: Sequence[str]) -> None:
    """A footer naming the settings all plotted records share, so labels need not repeat them."""
    shared = [f for f in fields if f not in _varying(records, fields)]
    if shared:
        # supxlabel, unlike fig.text, gets its own room from the constrained layout.
        fig.supxlabel("all runs: " + _describe(records[0], shared), x=0.005, ha="left", fontsize=8, color="#555555")


def _patch_legend(fig: Figure, title: str, colors: dict[str, str]) -> None:
    """A colour key to the right of the plots, outside the data."""
    from matplotlib.patches import Patch

    handles = [Patch(color=color, label=name) for name, color in colors.items()]
    fig.legend(handles=handles, loc="outside right upper", title=title)


def _speedup_axis(ax: Axes, speedups: Sequence[float]) -> tuple[bool, tuple[float, float]]:
    """Scale, limits and ticks of the speedup axis (shared, so one call sets all): (log?, limits).

    Gains of a few percent read best as percent on a linear axis. A stream mode only changes the
    stop check, so a ratio beyond 4x or under 1/4 is a cold or disturbed baseline, not a gain: such
    points are left out of the limits (and pinned to the edge by the caller) rather than flatten
    every other line. What range remains beyond 2.5x goes on a log axis, in ratios.
    """
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    inside = [s for s in speedups if 0.25 <= s <= 4.0]
    lo, hi = min(*inside, 1.0), max(*inside, 1.0)  # the baseline stays in view
    if hi / lo > 2.5:
        ax.set_yscale("log", base=2)
        limits = (lo / 1.25, hi * 1.25)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    else:
        pad = max((hi - lo) * 0.1, 0.01)
        limits = (lo - pad, hi + pad)
        # Round percent steps that divide 100 %, so 0 % is always a tick.
        step = next(s for s in (0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5) if (hi - lo) / s <= 8)
        ax.yaxis.set_major_locator(MultipleLocator(step))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _pct_label(_gain_pct(v))))
    ax.set_ylim(*limits)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    return ax.get_yscale() == "log", limits


def _pct_label(gain: float) -> str:
    gain = round(gain, 1)
    return "0 %" if gain == 0 else f"{gain:+g} %"


def _gain_pct(speedup: float) -> float:
    return (speedup - 1.0) * 100.0


def _rank(order: Sequence[str] | dict[str, str], name: str) -> tuple[int, str]:
    """Known names in their reading order, then unknown ones alphabetically."""
    names = list(order)
    return (names.index(name) if name in names else len(names), name)


def _color(palette: dict[str, str], name: str) -> str:
    return palette.get(name) or _SPARE_COLORS[sum(map(ord, name)) % len(_SPARE_COLORS)]  # stable, unlike hash()


def _si(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.1f}k"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

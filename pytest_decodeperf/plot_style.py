"""The look of the figures: one colour per stream mode and cache, shared styling, labels in words.

Kept apart from ``plots.py`` (what each figure shows) so both stay readable; no matplotlib import
at module level.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .records import ResultRecord
from .report import CACHE_ORDER, rank

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# One colour per stream mode in every figure, in the order a reader compares them (baseline first).
# Kept here rather than read from the engine so replotting a JSON file needs no torch.
MODE_COLORS = {
    "baseline": "#7f7f7f",
    "deferred": "#1f77b4",
    "pipelined": "#ff7f0e",
    "nostop": "#2ca02c",
    "hf-generate": "#9467bd",
    "hf-deferred": "#8c564b",
}
SPARE_COLORS = ["#e377c2", "#bcbd22", "#17becf", "#d62728", "#393b79", "#637939"]
CACHE_COLORS = {"none": "#a6761d", "dynamic": "#1b9e77", "static": "#7570b3"}
LINE_STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]

# Shared look of every figure: fonts, legends without frames, light grids, room made by the layout.
STYLE: dict[Any, Any] = {
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
CONFIG_FIELDS = ("new_tokens", "stop", "compile", "dtype", "device")

# -- labels and styling --------------------------------------------------------------------------


def config_sort(key: tuple[Any, ...]) -> tuple[Any, ...]:
    model, cache, batch_size, *rest = key
    return (model, rank(CACHE_ORDER, cache), batch_size, *[repr(v) for v in rest])


def group_label(r: ResultRecord, labelled: Sequence[str]) -> str:
    """``b8`` plus whatever else differs between groups, e.g. ``gpt2 · static · b8``."""
    head = [str(r.get(f)) for f in ("model", "cache") if f in labelled]
    extra = describe(r, [f for f in CONFIG_FIELDS if f in labelled])
    return " · ".join([*head, f"b{r['batch_size']}"]) + (f"\n{extra}" if extra else "")


def describe(r: ResultRecord, fields: Sequence[str]) -> str:
    """The values of ``fields`` in words: ``64 new tokens, compiled, float16``."""
    return ", ".join(WORDS.get(f, str)(r.get(f)) for f in fields)


WORDS: dict[str, Callable[[Any], str]] = {
    "compile": lambda v: "compiled" if v else "eager",
    "new_tokens": "{} new tokens".format,
    "stop": "stop={}".format,
    "cache": "{} KV cache".format,
}


def add_context(fig: Figure, records: Sequence[ResultRecord], fields: Sequence[str]) -> None:
    """A footer naming the settings all plotted records share, so labels need not repeat them."""
    shared = [f for f in fields if f not in varying_fields(records, fields)]
    if shared:
        # supxlabel, unlike fig.text, gets its own room from the constrained layout.
        fig.supxlabel("all runs: " + describe(records[0], shared), x=0.005, ha="left", fontsize=8, color="#555555")


def patch_legend(fig: Figure, title: str, colors: dict[str, str]) -> None:
    """A colour key to the right of the plots, outside the data."""
    from matplotlib.patches import Patch

    handles = [Patch(color=color, label=name) for name, color in colors.items()]
    fig.legend(handles=handles, loc="outside right upper", title=title)


def speedup_axis(ax: Axes, speedups: Sequence[float]) -> tuple[bool, tuple[float, float]]:
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
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: pct_label(gain_pct(v))))
    ax.set_ylim(*limits)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    return ax.get_yscale() == "log", limits


def pct_label(gain: float) -> str:
    gain = round(gain, 1)
    return "0 %" if gain == 0 else f"{gain:+g} %"


def gain_pct(speedup: float) -> float:
    return (speedup - 1.0) * 100.0


def color_of(palette: dict[str, str], name: str) -> str:
    return palette.get(name) or SPARE_COLORS[sum(map(ord, name)) % len(SPARE_COLORS)]  # stable, unlike hash()


def si(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.1f}k"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def varying_fields(records: Sequence[ResultRecord], fields: Sequence[str]) -> list[str]:
    """The fields that differ between records: only those are worth a label."""
    return [f for f in fields if len({repr(r.get(f)) for r in records}) > 1]

"""``roofline.png``: how far each variant's decode step is from its memory-bandwidth floor.

One horizontal bar per variant: its median ms per decode step, coloured by stream mode, with a
black mark at the floor (the bytes a step must move over the measured copy bandwidth, see
``engine/roofline/analytic.py``) and the fraction of bandwidth achieved written beside it. A bar far
right of its mark is overhead-bound (launches, Python, the stop check); a bar at its mark is
memory-bound. No matplotlib import at module level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .plot_style import CONFIG_FIELDS, MODE_COLORS, add_context, color_of, is_number, patch_legend
from .records import ResultRecord
from .report import CACHE_ORDER, STREAM_ORDER, rank

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROOFLINE_PNG = "roofline.png"


def roofline_records(records: Sequence[ResultRecord]) -> list[ResultRecord]:
    """Records with a measured ms/step and a floor, in the table's reading order."""
    usable = [r for r in records if is_number(r.get("floor_ms_per_step")) and is_number(r.get("ms_per_token"))]
    return sorted(
        usable,
        key=lambda r: (r["model"], rank(CACHE_ORDER, r["cache"]), r["batch_size"], rank(STREAM_ORDER, r["stream"])),
    )


def roofline_figure(records: Sequence[ResultRecord]) -> Figure:
    from matplotlib.figure import Figure

    recs = roofline_records(records)
    fig = Figure(figsize=(9.0, 1.2 + 0.32 * len(recs)))
    ax = fig.subplots()
    ys = list(range(len(recs)))[::-1]
    ms = [r["ms_per_token"] for r in recs]
    floors = [float(r["floor_ms_per_step"] or 0.0) for r in recs]
    colors = [color_of(MODE_COLORS, r["stream"]) for r in recs]
    ax.barh(ys, ms, color=colors, height=0.7)
    ax.scatter(floors, ys, marker="|", s=220, color="black", zorder=3, label="floor (bytes / bandwidth)")
    for y, r, value in zip(ys, recs, ms, strict=True):
        fraction = r.get("bw_fraction")
        text = f" {100 * fraction:.1f}% bw" if fraction is not None and is_number(fraction) else ""
        ax.text(value, y, text, va="center", fontsize=8)
    labels = [f"{r['model']} · {r['cache']} · b{r['batch_size']} · {r['stream']}" for r in recs]
    ax.set_yticks(ys, labels)
    ax.set_xlabel("ms per decode step (median); black mark: the memory-bandwidth floor")
    ax.set_xlim(0, max(ms) * 1.25)
    bandwidth = sorted({round(float(r.get("bandwidth_gb_per_s") or 0.0), 1) for r in recs})
    fig.suptitle(
        "Decode step time against its memory-bandwidth floor\n"
        f"measured copy bandwidth: {', '.join(f'{b:g}' for b in bandwidth)} GB/s"
    )
    add_context(fig, recs, CONFIG_FIELDS)
    modes = sorted({r["stream"] for r in recs}, key=lambda m: rank(STREAM_ORDER, m))
    patch_legend(fig, "stream mode", {m: color_of(MODE_COLORS, m) for m in modes})
    return fig

"""The history comparison (``compare.py``) as text: ``asv compare --split``'s sections and columns.

The terminal's table (``render_table``) and the Markdown report (``markdown.py``) take their sections, columns and
notes from here, so the two cannot tell a comparison differently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asv import util as asv_util

from ..fingerprint import describe
from .schema import PREFIX

if TYPE_CHECKING:
    from .compare import Comparison, Row


def _value(value: float | None, unit: str, err: float | None) -> str:
    return "n/a" if value is None else str(asv_util.human_value(value, unit, err=err))


def sections(cmp: Comparison) -> list[tuple[str, list[Row]]]:
    """``asv compare --split``'s sections, worse first, the empty ones too (the terminal's and the Markdown's)."""
    return [
        ("Worsened:", [r for r in cmp.rows if r.mark == "+"]),
        ("Improved:", [r for r in cmp.rows if r.mark == "-"]),
        ("No verdict:", [r for r in cmp.rows if r.mark == "?"]),
        ("Not significant:", [r for r in cmp.rows if r.mark == "~" and r.ratio is not None]),
        ("Unchanged:", [r for r in cmp.rows if r.mark == " " and r.ratio is not None]),
        ("Not compared:", [r for r in cmp.rows if r.ratio is None]),
    ]


def _now(cmp: Comparison) -> str:
    return cmp.current[:8] if cmp.current else "this run"


def header(cmp: Comparison) -> tuple[str, ...]:
    return ("Change", f"Before [{(cmp.ref or '')[:8]}]", f"After [{_now(cmp)}]", "Ratio", "Benchmark (Parameter)")


def cells(row: Row) -> tuple[str, ...]:
    """A row in ``header``'s columns, as ``asv compare`` prints it."""
    return (
        row.mark,
        _value(row.old, row.unit, row.old_err),
        _value(row.new, row.unit, row.new_err),
        ("~" if row.mark == "~" else "") + (f"{row.ratio:.2f}" if row.ratio is not None else "n/a"),
        row.label.removeprefix(PREFIX + ".") + (f"  [{row.note}]" if row.note else ""),
    )


def notes(cmp: Comparison) -> list[str]:
    """What the rows cannot say: skipped files, the two environments' differences, the machine's own move."""
    moved = cmp.drift is not None and (cmp.drift.moved(1 + cmp.fail_pct / 100) or any(r.mark == "?" for r in cmp.rows))
    return [
        *cmp.warnings,
        *filter(None, [describe(cmp.environment, (cmp.ref or "")[:8], "this run")]),
        *([cmp.drift.describe()] if cmp.drift is not None and moved else []),
        *(
            ["no drift canary in one of the two runs (an older history): judged by asv's statistics alone"]
            if cmp.drift is None and cmp.rows
            else []
        ),
    ]


def tally(cmp: Comparison) -> str:
    """``3 worsened, 0 improved, ...``: every section's count, the optional ones only where there are some."""
    optional = ("No verdict:", "Not significant:")
    return ", ".join(f"{len(rows)} {t.rstrip(':').lower()}" for t, rows in sections(cmp) if rows or t not in optional)


def render_table(cmp: Comparison) -> str:
    """The comparison for the terminal, in ``asv compare --split``'s sections and columns."""
    head = f"asv history of {cmp.machine}"
    if cmp.ref is None:
        return "\n".join([f"{head}: {cmp.problem}", *cmp.warnings])
    lines = [
        f"{head} ({cmp.env}): {_now(cmp)} against {cmp.ref[:8]}; a regression is worse by more than "
        f"{cmp.fail_pct:g}% and significant (asv compare's statistics); '~': not significant",
        *notes(cmp),
    ]
    for title, rows in sections(cmp):
        if not rows:
            continue
        table = [header(cmp), *(cells(r) for r in rows)]
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        lines += ["", title] + [
            "  ".join(
                [
                    *(
                        cell.rjust(w) if i in (1, 2, 3) else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(row[:4], widths, strict=True))
                    ),
                    row[4],
                ]
            ).rstrip()
            for row in table
        ]
    return "\n".join([*lines, "", tally(cmp)])

"""A run as Markdown, for people who will not read a CI log: what failed and how to reproduce it, then the verdicts,
then the numbers.

The order is the reader's: each failing item with the one command that runs it alone, the history gate's rows and
the A/B's verdicts worse first, then the results table. A PR comment has a size limit: what is cut from the end is
the least urgent. The columns, sections and notes are the terminal's (``report.py``, ``history/render.py``): the
two cannot tell a run differently. Pure: the pytest layer (``job_summary.py``) gathers what it renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .records import ABMetric, ABRecord, ResultRecord
from .report import NUMERIC, legend, notes, table, test_function

if TYPE_CHECKING:
    from .history.compare import Comparison

DECISIONS = {"different_worse": "worse", "different_better": "better", "same": "same", "unknown": "unknown"}
AB_METRICS = {"ms_per_token": "ms/token", "prefill_ms": "prefill", "tpot_ms": "TPOT", "request_ttft_ms": "TTFT"}


@dataclass(frozen=True)
class Failure:
    """A failing item (or a history regression, by the item that measured it) and what reproduces it alone."""

    nodeid: str
    message: str  # one line
    command: str | None  # None: no single item reproduces it


@dataclass
class Report:
    title: str  # "pytest-decodeperf on cuda"
    outcome: str  # "passed", "failed", ...
    environment: str  # what every number depends on (the session's header line)
    records: Sequence[ResultRecord] = ()
    failures: Sequence[Failure] = ()
    comparison: Comparison | None = None
    ab: Sequence[ABRecord] = ()
    ab_lines: Sequence[str] = ()  # the A/B's head and tally lines (ab/controller.py's summary)
    problems: Sequence[str] = field(default_factory=list)  # what stopped a part of the run (a history error, ...)

    @property
    def empty(self) -> bool:
        return not (self.records or self.failures or self.comparison or self.ab or self.problems)


def cell(text: str) -> str:
    """Text safe inside a table cell (and outside code): no column break, no HTML."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def grid(head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> list[str]:
    """A GitHub table; ``right``: the columns aligned right (numbers)."""
    align = ["---:" if r else "---" for r in (right or [False] * len(head))]
    return [
        "| " + " | ".join(cell(h) for h in head) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows),
    ]


def details(summary: str, lines: list[str]) -> list[str]:
    """Lines folded under ``summary`` (GitHub renders ``<details>``; the blank lines keep Markdown inside it)."""
    return ["<details>", f"<summary>{cell(summary)}</summary>", "", *lines, "", "</details>"] if lines else []


def failures(items: Sequence[Failure]) -> list[str]:
    if not items:
        return []
    out = [f"### Failing ({len(items)})", "", "Each command runs that item alone, with the options that change it.", ""]
    for f in items:
        out += [f"**`{f.nodeid}`**: {cell(f.message)}", ""]
        out += ["```bash", f.command, "```", ""] if f.command else []
    return out


def history(cmp: Comparison | None) -> list[str]:
    if cmp is None:
        return []
    from .history import render as text  # the terminal's sections, columns and notes

    if cmp.ref is None:
        return [f"### History of {cmp.machine}", "", cell(cmp.problem or ""), *(f"- {cell(w)}" for w in cmp.warnings)]
    now = cmp.current[:8] if cmp.current else "this run"
    out = [f"### History of {cmp.machine} ({cmp.env}): {now} against {cmp.ref[:8]}", ""]
    out += [
        f"A regression is worse by more than {cmp.fail_pct:g}% and significant (asv compare's statistics).",
        "",
        *(f"- {cell(note)}" for note in text.notes(cmp)),
        "",
    ]
    head = ("", *text.header(cmp)[1:])
    right = [False, True, True, True, False]
    shown: list[tuple[str, ...]] = []
    folded: list[tuple[str, ...]] = []
    for title, rows in text.sections(cmp):
        target = shown if title not in ("Unchanged:", "Not compared:") else folded
        target += [(title.rstrip(":").lower(), *text.cells(r)[1:]) for r in rows]
    out += [*(grid(head, shown, right) if shown else ["No metric changed beyond the gate."]), ""]
    out += details(f"{len(folded)} unchanged or not compared", grid(head, folded, right) if folded else [])
    return [*out, "", text.tally(cmp), ""]


def _ab_cell(metric: ABMetric | None) -> str:
    """``1.083 [1.051, 1.117] worse``: B/A, its interval, the decision."""
    if metric is None:
        return "-"
    word = DECISIONS.get(metric["decision"], metric["decision"]) if metric["judged"] else "not judged"
    ratio, low, high = metric["ratio"], metric["ci_low"], metric["ci_high"]
    if ratio is None:
        return word
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{ratio:.3f}{interval} {word}"


def _ab_rank(rec: ABRecord) -> int:
    """Worse first: failed, then undecided, then better, then the same."""
    decisions = {m["decision"] for m in rec["metrics"].values()}
    if rec["failed"]:
        return 0
    return 1 if "unknown" in decisions or not decisions else 2 if "different_better" in decisions else 3


def ab(records: Sequence[ABRecord], lines: Sequence[str]) -> list[str]:
    if not records:
        return []
    out = [f"### A/B against {records[0]['ref']}", "", *([cell(lines[0]), ""] if lines else [])]
    judged = [k for k in AB_METRICS if k in ("ms_per_token", "prefill_ms") or any(k in r["metrics"] for r in records)]
    head = ["", "item", *(f"{AB_METRICS[k]} B/A (99% CI)" for k in judged), "syncs/step A → B"]
    rows = []
    for rec in sorted(records, key=_ab_rank):
        a, b = (rec["syncs_per_step"] + [None, None])[:2]
        syncs = f"{a:g} → {b:g}" if a is not None and b is not None else "-"
        verdicts = [*(_ab_cell(rec["metrics"].get(k)) for k in judged), syncs]
        shown = ["error: " + rec["error"], *[""] * len(judged)] if rec["error"] else verdicts
        rows.append(["**fails**" if rec["failed"] else "passes", f"`{rec['test']}`", *shown])
    return [*out, *grid(head, rows), "", *([cell(lines[-1]), ""] if len(lines) > 1 else [])]


def results(records: Sequence[ResultRecord]) -> list[str]:
    if not records:
        return []
    t = table(records)
    right = [name in NUMERIC for name in t.columns]
    out = ["### Results", ""]
    groups: dict[str, list[list[str]]] = {}
    stops: dict[str, str] = {}
    for rec, row in zip(t.rows, t.cells, strict=True):
        groups.setdefault(test_function(rec), []).append(row)
        stops.setdefault(test_function(rec), rec["stop"])
    for name, rows in groups.items():
        out += [f"`{name}` (stop={stops[name]})", "", *grid(t.columns, rows, right), ""]
    return [
        *out,
        *details("How to read the table", [cell(legend("the table", t)), "", *(f"- {cell(n)}" for n in notes(t.rows))]),
    ]


def render(report: Report) -> str:
    """The whole report: a heading with the outcome, then each part that has something to say."""
    out = [f"## {report.title}: {report.outcome}", "", f"`{report.environment}`", ""]
    out += [*(f"- {cell(p)}" for p in report.problems), ""] if report.problems else []
    out += failures(report.failures)
    out += history(report.comparison)
    out += ab(report.ab, report.ab_lines)
    out += results(report.records)
    if report.empty:
        out.append("No decode_perf item ran.")
    return "\n".join(out).rstrip() + "\n"

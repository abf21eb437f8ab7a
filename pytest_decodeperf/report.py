"""The results table: one row per variant, grouped so the comparisons of the article this tool grew
from (*Optimizing Token Generation in PyTorch Decoder Models*, see README) read straight off it.

Rows are grouped by model, cache, batch size and length, with the stream modes in a fixed order
inside a group (baseline first), and each row's speedup is its tokens/s over the baseline's of
the same group, measured in the same run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .records import ResultRecord

# The order a reader compares things in; names registered later sort after these, by name. Fixed
# here rather than read from the engine's registries, so rendering records needs no torch.
STREAM_ORDER = ("baseline", "deferred", "pipelined", "nostop", "hf-generate", "hf-deferred")
CACHE_ORDER = ("none", "dynamic", "static")

COLUMNS = (
    "model",
    "cache",
    "stream",
    "batch",
    "prompt",
    "new",
    "tok/s",
    "spread",
    "ms/token",
    "itl p99",
    "floor ms",
    "% bw",
    "GB/s",
    "prefill ms",
    "steps",
    "syncs/step",
    "vs baseline",
    "parity",
)


def test_function(rec: ResultRecord) -> str:
    """The test a record came from, without its parameter id."""
    return rec["test"].split("[", 1)[0]


def group_key(rec: ResultRecord) -> tuple[object, ...]:
    """Records of one group differ only in stream mode: their tokens/s compare as a speedup."""
    return (
        test_function(rec),
        rec["model"],
        rec["cache"],
        rec["batch_size"],
        rec["new_tokens"],
        rec["stop"],
        rec["compile"],
        rec["dtype"],
        rec["device"],
        prompt_label(rec),
        rec.get("tp", 1),
        rec.get("attn"),
    )


def model_label(rec: ResultRecord) -> str:
    """How the record's ids show its model (a checkpoint by its directory's name), with a dtype off float32 and the
    attention kernel when one was named (``attn=eager``)."""
    label = rec.get("model_label") or rec["model"]
    label += f" {rec['dtype']}" if rec["dtype"] != "float32" else ""
    return label + (f" attn={attn}" if (attn := rec.get("attn")) else "")


def prompt_label(rec: ResultRecord) -> str:
    """``16``, or ``16 mixed`` / ``16 text`` for left-padded rows up to 16 tokens (older records: 4)."""
    kind = rec.get("prompts", "random")
    return str(rec.get("prompt_len", 4)) + ("" if kind == "random" else f" {kind}")


def dynamic_peaks(records: Sequence[ResultRecord]) -> list[str]:
    """One line: a dynamic cache's generation peak (CUDA) over what a static cache of its length takes."""
    ratios = [
        peak / static
        for r in records
        if r["cache"] == "dynamic"
        and (peak := r.get("generation_peak_bytes"))
        and (static := r.get("kv_cache_bytes_analytic"))
    ]
    if not ratios:
        return []
    return [
        f"dynamic cache: the generation's peak over what was resident is {min(ratios):.2f}x to {max(ratios):.2f}x "
        "a static cache of the same length (activations and torch.cat's copies included; generation_peak_bytes "
        "and kv_cache_bytes_analytic in the JSON)"
    ]


def routed_experts(records: Sequence[ResultRecord]) -> list[str]:
    """One line per MoE model: the routed experts a decode step read (counted from its routers), by cache and batch."""
    groups: dict[str, dict[str, float]] = {}
    totals: dict[str, int] = {}
    for r in sorted(records, key=lambda r: (rank(CACHE_ORDER, r["cache"]), r["batch_size"])):
        active, total = r.get("active_experts_per_step"), r.get("routed_experts")
        if active is not None and total:
            groups.setdefault(model_label(r), {}).setdefault(f"{r['cache']} b{r['batch_size']}", active)
            totals[model_label(r)] = total
    return [
        f"{model}: routed experts a decode step reads, of {totals[model]} (distinct across the batch, as its routers "
        "picked): " + ", ".join(f"{key} {value:.1f}" for key, value in by.items())
        for model, by in groups.items()
    ]


def speculation(records: Sequence[ResultRecord]) -> list[str]:
    """One line per speculative variant: what its verifier kept, and what its "vs baseline" is against."""
    lines = []
    for r in records:
        length, rate = r.get("mean_accepted_length"), r.get("acceptance_rate")
        if length is None:
            continue
        accepted = f"acceptance {100 * rate:.0f}%" if rate is not None else "nothing proposed"
        draft = f" + {r.get('draft_steps')} draft steps" if r.get("draft_steps") else ""
        against = f"; vs {r.get('paired_with')}" if r.get("paired_with") else ""
        lines.append(
            f"{r['stream']} {model_label(r)} {r['cache']} b{r['batch_size']}: {length:.2f} tokens a verify step "
            f"({accepted}, {r.get('proposed_tokens')} proposed, {r.get('verify_steps')} verify steps{draft}){against}"
        )
    return lines


def serving(records: Sequence[ResultRecord]) -> list[str]:
    """One line per continuous-batching variant: the figures a server is judged by, per request."""

    def ms(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, (int, float)) else "-"

    return [
        f"{r['stream']} {model_label(r)} {r.get('requests')} requests, {r.get('concurrency')} at once: "
        f"{r.get('throughput_tokens_per_s') or 0:,.1f} tok/s over the run; per request TTFT p50 "
        f"{ms(r.get('request_ttft_p50_ms'))} / p99 {ms(r.get('request_ttft_p99_ms'))} ms, TPOT p50 "
        f"{ms(r.get('tpot_p50_ms'))} / p99 {ms(r.get('tpot_p99_ms'))} ms, ITL p99 {ms(r.get('request_itl_p99_ms'))} "
        f"ms; {r.get('occupancy_mean') or 0:.1f} requests a step on average; {r.get('kv_blocks')} KV blocks of "
        f"{r.get('kv_block_tokens')} tokens"
        for r in records
        if r.get("requests") is not None
    ]


PROMPT_ORDER = ("random", "mixed", "text")


def prompt_order(rec: ResultRecord) -> tuple[int, tuple[int, str]]:
    """Prompt length, then random before mixed before text."""
    return (rec.get("prompt_len", 4), rank(PROMPT_ORDER, rec.get("prompts", "random")))


def prefill_by_prompt(records: Sequence[ResultRecord]) -> list[str]:
    """One line per model, cache and batch measured at several prompt lengths: baseline prefill ms per length."""
    groups: dict[tuple[object, ...], dict[str, float]] = {}
    for r in sorted(records, key=prompt_order):
        if r["stream"] == "baseline" and r["prefill_ms"] is not None:
            key = (model_label(r), r["cache"], r["batch_size"], r["compile"], r["dtype"])
            groups.setdefault(key, {}).setdefault(prompt_label(r), r["prefill_ms"])
    lines = []
    for (model, cache, batch, _compile, _dtype), by_len in groups.items():
        if len(by_len) > 1:
            cells = ", ".join(f"{label}: {ms:.2f}" for label, ms in by_len.items())
            lines.append(f"prefill ms by prompt length ({model} {cache} b{batch}, baseline): {cells}")
    return lines


def rank(order: Sequence[str], name: str) -> tuple[int, str]:
    """Sort key ``(place, name)``: ``name``'s place in ``order``, unknown names after, by name."""
    return (order.index(name) if name in order else len(order), name)


def sort_records(records: Sequence[ResultRecord]) -> list[ResultRecord]:
    """Test (in run order), model, cache in the article's order (none, dynamic, static), batch, stream mode."""
    first_seen = {name: i for i, name in reversed(list(enumerate(test_function(r) for r in records)))}
    return sorted(
        records,
        key=lambda r: (
            first_seen[test_function(r)],
            r["model"],
            rank(CACHE_ORDER, r["cache"]),
            r["batch_size"],
            prompt_order(r),
            r.get("tp", 1),
            str(group_key(r)[4:]),
            rank(STREAM_ORDER, r["stream"]),
        ),
    )


def _usable(value: float | None) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def speedups(records: Sequence[ResultRecord]) -> list[float | None]:
    """tok/s over the same group's baseline tok/s, per record (None without a usable baseline).

    The one grouping of the package: the table's "vs baseline" column and the speedup figure
    both come from here, so they cannot disagree.
    """
    base: dict[tuple[object, ...], float] = {}
    for r in records:
        if r["stream"] == "baseline" and _usable(r["tokens_per_s"]):
            base.setdefault(group_key(r), r["tokens_per_s"])
    out: list[float | None] = []
    for r in records:
        paired = r.get("vs_baseline")
        if paired is not None and _usable(paired):  # from rounds run alternately with the baseline's
            out.append(paired)
            continue
        b = base.get(group_key(r))
        out.append(r["tokens_per_s"] / b if b is not None and _usable(r["tokens_per_s"]) else None)
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _syncs(rec: ResultRecord) -> str:
    """``hidden+flag`` blocking reads per decode step, ``!`` over the budget; ``-`` when not counted."""
    hidden, flag = rec.get("syncs_per_step"), rec.get("flag_reads_per_step")
    if hidden is None or flag is None:
        return "-"
    budget, worst = rec.get("sync_budget"), rec.get("max_syncs_per_step")
    over = "!" if budget is not None and worst is not None and worst > budget else ""
    return f"{hidden:.3g}+{flag:.3g}{over}"


TP_COLUMNS = ("tp", "world", "coll/step")  # shown when a record ran on more than one process


def _collectives(rec: ResultRecord) -> str:
    """``10 (12.8 kB)``: collectives a decode step launches on one rank, and their payload."""
    count, size = rec.get("collectives_per_step"), rec.get("collective_bytes_per_step")
    return "-" if count is None else f"{count:.3g}" + (f" ({size / 1e3:.1f} kB)" if size else "")


# Right-aligned: the numbers (the terminal pads them, the Markdown aligns them right).
NUMERIC = frozenset(
    {
        *("batch", "new", "tok/s", "spread", "ms/token", "itl p99", "floor ms", "% bw", "GB/s", "prefill ms"),
        *("syncs/step", "vs baseline", "tp", "world", "coll/step"),
    }
)


@dataclass(frozen=True)
class Table:
    """The results table before layout: the terminal's ``render_table`` and the Markdown report lay it out."""

    columns: tuple[str, ...]
    rows: list[ResultRecord]  # sorted (``sort_records``)
    cells: list[list[str]]  # one per row, in ``columns``' order

    @property
    def ranks(self) -> bool:
        return self.columns[-len(TP_COLUMNS) :] == TP_COLUMNS


def table(records: Sequence[ResultRecord]) -> Table:
    rows = sort_records(records)
    ranks = any(r.get("tp", 1) > 1 or r.get("world_size", 1) > 1 for r in rows)
    cells = []
    shaky = {group_key(r) for r in rows if r["stream"] == "baseline" and r.get("unstable")}
    for rec, speed in zip(rows, speedups(rows), strict=True):
        paired = rec.get("vs_baseline") is not None  # its own interval says it all: the baseline's does not enter
        doubt = "?" if rec.get("unstable") or (not paired and group_key(rec) in shaky) else ""
        model = model_label(rec) + (" (compiled)" if rec["compile"] else "")
        steps = str(rec["steps"]) + (f" (+{rec['extra_steps']})" if rec["extra_steps"] else "")
        cells.append(
            [
                model,
                rec["cache"],
                rec["stream"],
                str(rec["batch_size"]),
                prompt_label(rec),
                str(rec["new_tokens"]),
                _fmt(rec["tokens_per_s"], ",.1f"),
                "±" + _fmt(rec["spread_pct"], ".1f") + "%",
                _fmt(rec["ms_per_token"], ".3f"),
                _fmt(rec.get("itl_p99_ms"), ".3f"),
                _fmt(rec.get("floor_ms_per_step"), ".3f"),
                _fmt(100 * f if (f := rec.get("bw_fraction")) is not None else None, ".1f"),
                _fmt(rec.get("achieved_gb_per_s"), ".2f"),
                _fmt(rec["prefill_ms"], ".2f"),
                steps,
                _syncs(rec),
                _fmt(speed, ".3f") + "x" + doubt if speed is not None else "-",
                rec["parity"],
                *((str(rec.get("tp", 1)), str(rec.get("world_size", 1)), _collectives(rec)) if ranks else ()),
            ]
        )
    return Table(COLUMNS + (TP_COLUMNS if ranks else ()), rows, cells)


def legend(title: str, t: Table) -> str:
    """What the columns mean, in one line above the table."""
    return (
        f"{title}: {len(t.rows)} variants; tok/s and ms/token are medians, spread = IQR/median of tok/s; "
        "prompt = prompt tokens (mixed/text: left-padded rows up to that many); new = max new tokens; "
        "itl p99 = 99th percentile of every decode step's inter-token latency (ms, all rounds); "
        "floor ms = bytes a decode step must move / measured copy bandwidth, "
        "% bw = those bytes per measured ms/token over that bandwidth, GB/s = what that achieves; "
        "prefill ms = time to first token; "
        "steps = forward passes (+ run past the last kept); syncs/step = hidden + stop-flag blocking device reads "
        "per decode step (! over budget); vs baseline = tok/s over the baseline's, the median of rounds run "
        "alternately with the baseline's ('?': not pinned within +-5%)"
        + (
            "; tp = ranks the model is sharded over (a round is its slowest rank's; the floor one rank's bytes), "
            "world = processes in the launch, coll/step = collectives a decode step launches on one rank (payload)"
            if t.ranks
            else ""
        )
    )


def notes(rows: Sequence[ResultRecord]) -> list[str]:
    """The lines below the table: each record's notes, what a column cannot say, and the unstable rows' warning."""
    out = [f"note: {n}" for n in sorted({n for r in rows for n in r["note"].split("; ") if n})]
    if any(r["stream"] == "nostop" for r in rows):
        out.append(
            "note: nostop runs every step even after all rows finished (see steps): its tok/s counts kept tokens only, "
            "so it can read below baseline; its ms/token is the per-step bound without a stop check"
        )
    out += [f"note: {line}" for line in prefill_by_prompt(rows)]
    out += [f"note: {line}" for line in dynamic_peaks(rows)]
    out += [f"note: {line}" for line in routed_experts(rows)]
    out += [f"note: {line}" for line in speculation(rows)]
    out += [f"note: {line}" for line in serving(rows)]
    out.append("note: '-' = not measured here (no decode step, not counted under torch.compile, or no baseline)")
    unstable = [r for r in rows if r.get("unstable")]
    if unstable:
        out.append(
            f"WARNING: {len(unstable)} of {len(rows)} variants are unstable (the 95% interval of their median, or of "
            "their ratio to the baseline, is wider than +-5%): their 'vs baseline' carries '?' and is not a speedup; "
            "give it more time (--decodeperf-max-time, decodeperf run --max-time), one thread, or a quieter machine"
        )
    return out


def render_table(records: Sequence[ResultRecord], title: str = "decode perf") -> str:
    t = table(records)
    cells = [list(t.columns), *t.cells]
    widths = [max(len(row[i]) for row in cells) for i in range(len(t.columns))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if name in NUMERIC else c.ljust(w) for name, c, w in zip(t.columns, row, widths, strict=True)
        )

    rule = "-" * len(line(cells[0]))
    out = [legend(title, t), rule, line(cells[0]), rule]
    current = None
    for rec, row in zip(t.rows, t.cells, strict=True):
        if test_function(rec) != current:
            current = test_function(rec)
            out.append(f"{current}  (stop={rec['stop']})")
        out.append(line(row))
    out.append(rule)
    return "\n".join([*out, *notes(t.rows)])

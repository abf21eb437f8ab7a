"""The roofline split and the inter-token latency tails in asv history, beside histories that predate them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_asv_history import DECODE, make_record, repo, results_dir, write  # noqa: F401
from test_regression import compare, row

from pytest_decodeperf.records import ResultRecord
from pytest_decodeperf.report import render_table

Repo = tuple[Path, list[str]]
NEW_METRICS = (
    "time_itl_p90",
    "time_itl_p99",
    "track_weight_bytes_per_step",
    "track_kv_bytes_per_step",
    "track_state_bytes_per_step",
    "track_active_experts_per_step",
)


def with_split(rec: ResultRecord, stall: float = 1.0, experts: float | None = 5.25) -> ResultRecord:
    """``rec`` as this version records it: the bytes split, active experts and per-round ITL tails."""
    ms = rec["ms_per_token"]
    rec.update(
        weight_bytes_per_step=4_000_000.0,
        kv_bytes_per_step=150_000.0,
        state_bytes_per_step=12_288.0,
        weight_bytes_resident=9_000_000,
        active_experts_per_step=experts,
        routed_experts=16,
        ttft_ms=rec["prefill_ms"],
        itl_p50_ms=ms,
        itl_p90_ms=ms * stall,
        itl_p99_ms=ms * stall,
        samples_itl_p90_ms=[ms * stall * (1 + i / 100) for i in range(7)],
        samples_itl_p99_ms=[ms * stall * (1 + i / 100) for i in range(7)],
    )
    return rec


def test_the_split_and_the_tails_are_benchmarks_of_their_own(repo: Repo) -> None:
    write(repo, 0, [with_split(make_record())])
    bench = json.loads((results_dir(repo) / "benchmarks.json").read_text())
    for metric in NEW_METRICS:
        entry = bench[DECODE.replace("time_decode_per_token", metric)]
        assert entry["type"] == metric.split("_", 1)[0]
        assert entry["unit"] == {"time": "seconds", "track": "count" if "experts" in metric else "bytes"}[entry["type"]]


def test_a_history_from_before_them_still_compares_and_they_start_their_own_line(repo: Repo) -> None:
    write(repo, 0, [make_record(ms=2.0, seed=1)])  # an older record: none of the new fields
    now = [with_split(make_record(ms=2.0, seed=2))]
    write(repo, 1, now)
    cmp = compare(repo, 1, now)
    assert cmp.problem is None and not cmp.failed
    assert row(cmp).mark == " " and row(cmp).ratio is not None  # the old metrics compare as before
    for metric in NEW_METRICS:
        assert row(cmp, metric).note == "no earlier value"


def test_a_stall_shows_in_the_comparison_but_does_not_gate(repo: Repo) -> None:
    write(repo, 0, [with_split(make_record(ms=2.0, seed=1))])
    now = [with_split(make_record(ms=2.0, seed=2), stall=3.0, experts=7.0)]
    write(repo, 1, now)
    cmp = compare(repo, 1, now)
    tail = row(cmp, "time_itl_p99")
    assert tail.ratio == pytest.approx(3.0, rel=0.02) and tail.note.startswith("not gated:")
    assert row(cmp, "track_active_experts_per_step").ratio == pytest.approx(7.0 / 5.25)
    assert not cmp.failed


def test_records_without_the_new_fields_still_render() -> None:
    table = render_table([make_record()])
    assert "itl p99" in table
    line = next(x for x in table.splitlines() if x.startswith("tiny-gpt2"))
    assert " - " in line  # no ITL measured: a dash, not a crash

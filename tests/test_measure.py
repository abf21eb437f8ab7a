"""Measurement: warmup apart, per-round samples, prefill apart from decode, one record schema."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from engine_fixtures import tiny_model  # noqa: F401
from transformers import PreTrainedModel

from pytest_decodeperf import DecodePerfError, Runner, Variant
from pytest_decodeperf.engine.decode.loop import DecodeOutput
from pytest_decodeperf.engine.measure.nvtx import Tracer, parse_profile_steps
from pytest_decodeperf.engine.measure.rounds import TARGET_PCT, UNSTABLE_PCT, Budget, Clock, measure
from pytest_decodeperf.records import ResultRecord


def test_a_variant_keeps_warmup_apart_and_one_sample_per_round(tiny_model: PreTrainedModel) -> None:
    runner = Runner("cpu", rounds=4, warmup=2)
    result = runner.run(Variant("tiny-gpt2", "static", "pipelined", 2, 16), model=tiny_model)
    rec = result.record("t::x")
    assert len(rec["warmup_s"]) == 2
    assert rec["rounds"] == len(rec["samples_s"]) == len(rec["samples_ms_per_token"]) == 4
    assert len(rec["samples_prefill_ms"]) == 4
    for total, prefill in zip(rec["samples_s"], rec["samples_prefill_ms"], strict=True):
        assert 0 < prefill / 1e3 < total
    assert rec["parity"] == "pass"
    assert rec["steps"] == rec["generated_tokens"] + 1 and rec["extra_steps"] == 1
    assert rec["peak_allocated_bytes"] is None  # CUDA only
    assert set(rec) == set(ResultRecord.__annotations__) - {"fingerprint"}  # added by the plugin's session


def test_tokens_per_second_is_the_median_of_per_round_rates(tiny_model: PreTrainedModel) -> None:
    result = Runner("cpu", rounds=5, warmup=0).run(Variant("tiny-gpt2", "dynamic", "baseline", 3, 16), tiny_model)
    rec = result.record()
    rates = sorted(3 * rec["generated_tokens"] / s for s in rec["samples_s"])
    assert rec["tokens_per_s"] == pytest.approx(rates[2])
    assert rec["parity"] == "pass"  # held to transformers' generate(), like every mode


def test_hf_deferred_is_refused_on_cpu_with_the_reason() -> None:
    with pytest.raises(DecodePerfError, match="'hf-deferred' needs CUDA"):
        Variant("tiny-gpt2", stream="hf-deferred").validate("cpu")


def test_nvtx_ranges_are_usable_and_the_capture_window_needs_cuda() -> None:
    tracer = Tracer(nvtx=True)
    with tracer.range("step 0"):
        pass
    with pytest.raises(DecodePerfError, match="needs CUDA"):
        Tracer(profile_steps=(1, 3), device=torch.device("cpu"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5:2", "START < STOP"),
        ("a:b", "START:STOP"),
        ("1:100", "ends after the run's last step"),
    ],
)
def test_bad_profile_windows_are_named(text: str, message: str) -> None:
    with pytest.raises(DecodePerfError, match=message):
        parse_profile_steps(text, new_tokens=64)


def test_the_engine_cli_prints_the_variant_table() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_decodeperf",
            "run",
            "--device",
            "cpu",
            "--caches",
            "dynamic,static",
            "--streams",
            "baseline,pipelined",
            "--batch-sizes",
            "2",
            "--new-tokens",
            "12",
            "--rounds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "vs baseline" in out.stdout
    assert out.stdout.count("tiny-gpt2") == 4
    assert "pass" in out.stdout


def test_the_engine_cli_reports_bad_input_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest_decodeperf", "run", "--caches", "quantized"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "decodeperf: unknown cache type 'quantized'; choose from: dynamic, none, paged, static"


def test_a_compiled_variant_keeps_its_compile_round_apart_and_counts_graphs(tiny_model: PreTrainedModel) -> None:
    runner = Runner("cpu", rounds=2, warmup=1)
    rec = runner.run(Variant("tiny-gpt2", "static", "pipelined", 1, 16, compile=True), tiny_model).record()
    assert rec["parity"] == "pass"
    assert rec["compiled_graphs"] is not None and rec["compiled_graphs"] >= 1
    assert rec["graph_breaks"] is not None
    # The compile round is kept apart; warmup goes on while rounds still compile graphs.
    assert len(rec["warmup_s"]) >= 1 and rec["warmup_s"][0] > max(rec["samples_s"])


def test_an_unknown_compile_mode_is_refused() -> None:
    with pytest.raises(DecodePerfError, match="compile must be True, False or one of default, reduce-overhead"):
        Variant("tiny-gpt2", compile="ludicrous").validate()


def test_the_runner_pins_torch_threads_while_measuring_and_records_them(tiny_model: PreTrainedModel) -> None:
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    rec = Runner("cpu", rounds=1, warmup=0, threads=wanted).run(
        Variant("tiny-gpt2", batch_size=1, new_tokens=6), tiny_model
    )
    assert rec.record()["threads"] == wanted
    assert torch.get_num_threads() == before  # restored for the caller


def test_an_unstable_variant_gets_no_clean_speedup_and_a_warning() -> None:
    from test_plots import record

    from pytest_decodeperf.report import render_table

    steady = [record("baseline"), record("pipelined")]
    assert "x?" not in render_table(steady) and "unstable" not in render_table(steady)
    shaky = [record("baseline", spread_pct=25.0, unstable=True), record("pipelined")]
    table = render_table(shaky)
    pipelined = next(line for line in table.splitlines() if " pipelined " in line)
    assert "1.100x?" in pipelined  # its baseline is noise: the ratio is marked, not shown clean
    assert "WARNING: 1 of 2 variants are unstable (the 95% interval of their median" in table


def test_a_speedup_from_rounds_paired_with_the_baseline_is_shown_and_judged_by_its_own_interval() -> None:
    from test_plots import record

    from pytest_decodeperf.report import render_table

    rows = [record("baseline", unstable=True), record("pipelined", vs_baseline=1.234, unstable=False)]
    pipelined = next(line for line in render_table(rows).splitlines() if " pipelined " in line)
    assert "1.234x" in pipelined and "1.234x?" not in pipelined  # not the ratio of medians (1.100), no doubt


# ---------------------------------------------------------------------- adaptive rounds, on a fake clock
class FakeRounds:
    """``run_once`` stand-ins whose rounds take given seconds on a fake ``perf_counter`` (no real timing)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        monkeypatch.setattr("pytest_decodeperf.engine.measure.rounds.time.perf_counter", lambda: self.now)
        self.out = DecodeOutput(torch.zeros(1, 5, dtype=torch.long), 1, 5, 0, 0)

    def of(self, durations: list[float]) -> Callable[[Clock], DecodeOutput]:
        times = iter(durations)

        def once(clock: Clock) -> DecodeOutput:
            self.now += next(times)
            return self.out

        return once


def test_median_interval_is_the_binomial_order_statistics_interval() -> None:
    from pytest_decodeperf.engine.measure.rounds import median_interval

    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (3.0, 1.0, 5.0)  # below 6 values: the whole range
    xs = [float(x) for x in range(1, 11)]
    assert median_interval(xs) == (5.5, 2.0, 9.0)  # n=10: x(2)..x(9), 97.9% (x(3)..x(8) would be 89%)
    _, lo, hi = median_interval([float(x) for x in range(1, 101)])
    assert (lo, hi) == (40.0, 61.0)  # the textbook n=100 interval
    assert math.isnan(median_interval([])[0])


def test_rounds_go_on_until_the_median_is_pinned_then_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRounds(monkeypatch)
    noisy = [1.0, 1.3, 0.8, 1.2, 0.9] + [1.0] * 20  # wide at first, then steady rounds pin the median
    m = measure(fake.of(noisy), torch.device("cpu"), Budget(5, max_time_s=100.0), warmup=0)
    assert 5 < len(m.rounds) < 25 and m.precision_pct <= TARGET_PCT
    exact = measure(fake.of(noisy), torch.device("cpu"), Budget(5), warmup=0)
    assert len(exact.rounds) == 5 and exact.precision_pct > UNSTABLE_PCT  # no budget: exactly the minimum


def test_the_time_budget_ends_the_rounds_of_a_variant_that_never_settles(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRounds(monkeypatch)
    wild = [1.0, 2.0] * 100
    m = measure(fake.of(wild), torch.device("cpu"), Budget(5, max_time_s=12.0), warmup=0)
    assert len(m.rounds) == 13  # the 5 of the minimum, then 12 s more: spent (it is checked between rounds)
    assert m.precision_pct > UNSTABLE_PCT


def test_a_reference_alternates_with_the_variant_and_the_speedup_is_the_median_of_pairs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeRounds(monkeypatch)
    order: list[str] = []
    variant_s = iter([1.0, 2.0, 1.0, 2.0, 1.0])  # the machine doubles its speed every other pair...
    base_s = iter([1.25, 1.25, 2.5, 1.25, 2.5, 1.25])  # ...both halves of a pair alike (first: the warm round)

    def variant(clock: Clock) -> DecodeOutput:
        order.append("V")
        fake.now += next(variant_s)
        return fake.out

    def baseline(clock: Clock) -> DecodeOutput:
        order.append("B")
        fake.now += next(base_s)
        return fake.out

    m = measure(variant, torch.device("cpu"), Budget(5), warmup=0, reference=lambda: baseline)
    assert "".join(order) == "B" + "BVVBBVVBBV"  # warmed, then each pair's order alternates
    assert m.vs_reference == (1.25, 1.25, 1.25) and m.precision_pct == 0.0  # medians alone: 1.0 s vs 1.25 s


def test_a_stream_mode_is_paired_with_its_baseline_except_where_that_would_time_something_else(
    tiny_model: PreTrainedModel,
) -> None:
    runner = Runner("cpu", rounds=2, warmup=0)
    result = runner.run(Variant("tiny-gpt2", "static", "pipelined", 1, 8), tiny_model)
    rec = result.record()
    assert len(result.measurement.reference_rounds) == 2 and rec["vs_baseline"] is not None
    assert rec["vs_baseline_low"] <= rec["vs_baseline"] <= rec["vs_baseline_high"]
    assert rec["kv_cache_bytes"] == rec["kv_cache_bytes_analytic"]  # the variant's own cache was checked
    assert not runner._pairable(tiny_model, Variant("tiny-gpt2", "static", "baseline", 1, 8))
    assert not runner._pairable(tiny_model, Variant("tiny-gpt2", "static", "pipelined", 1, 8, compile=True))
    assert not Runner("cpu", paired=False)._pairable(tiny_model, Variant("tiny-gpt2", "static", "pipelined", 1, 8))

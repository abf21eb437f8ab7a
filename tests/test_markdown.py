"""The Markdown report: a failing item's command reproduces it alone; the history and A/B verdicts read worse first.

One real session (under pytest-xdist, whose controller holds every record and every report) writes the report
to a path and to GitHub's step summary, and its repro command is then run as it stands. The rest renders
synthetic records: the history gate's rows from a real asv history, the A/B's from ``ABRecord``s.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from test_asv_history import TEST, make_record, private_temp_dir, repo, write  # noqa: F401
from test_plugin import assert_one_usage_error_line
from test_regression import Repo, compare
from test_sync_budget import FORWARD_READ_CONFTEST

from pytest_decodeperf.job_summary import MarkdownPlugin
from pytest_decodeperf.markdown import Report, render
from pytest_decodeperf.options import OPTIONS, Settings
from pytest_decodeperf.records import ABMetric, ABRecord
from pytest_decodeperf.session import DecodePerfSession

Run = Callable[..., pytest.RunResult]

TWO_ITEMS = """
import pytest


@pytest.mark.decode_perf(stream="baseline", new_tokens=6)
def test_gen():
    pass


@pytest.mark.decode_perf(stream="baseline", new_tokens=6, max_syncs_per_step=1)
def test_declared():
    pass
"""
FAILING = "test_gen.py::test_gen[tiny-gpt2-dynamic-baseline-b1]"
SYNC_FAILURE = "tiny-gpt2-dynamic-baseline-b1: 1 hidden blocking device read(s) in a decode step, budget 0"


def test_a_failing_items_command_in_the_report_reproduces_it_alone(
    pytester: pytest.Pytester, run_decodeperf: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(FORWARD_READ_CONFTEST)  # the model's forward reads a value: max_syncs_per_step=0 fails
    pytester.makepyfile(test_gen=TWO_ITEMS)
    summary = pytester.path / "summary.md"
    summary.write_text("## an earlier step's summary\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

    result = run_decodeperf("-n", "1", "-p", "xdist", "--decodeperf-markdown=report.md")

    result.assert_outcomes(passed=1, failed=1)
    text = (pytester.path / "report.md").read_text()
    assert summary.read_text() == "## an earlier step's summary\n" + text  # appended, whole
    assert text.startswith("## pytest-decodeperf on cpu: failed\n") and "### Failing (1)" in text
    assert f"**`{FAILING}`**: {SYNC_FAILURE}" in text
    [command] = re.findall(r"```bash\n(.*)\n```", text)
    assert command.startswith(f"pytest '{FAILING}' ") and "--decodeperf-rounds=2 --decodeperf-max-time=0" in command
    results = text.split("### Results", 1)[1]
    assert "`test_gen.py::test_gen`" in results and "`test_gen.py::test_declared`" in results  # from the worker

    env = {k: v for k, v in os.environ.items() if not k.startswith("DECODEPERF") and k != "GITHUB_STEP_SUMMARY"}
    words = shlex.split(command)
    alone = subprocess.run(
        [sys.executable, "-m", *words], cwd=pytester.path, env=env, capture_output=True, text=True, timeout=300
    )
    assert alone.returncode == 1, alone.stdout[-3000:]
    assert SYNC_FAILURE in alone.stdout and "1 failed in" in alone.stdout and "test_declared" not in alone.stdout


def test_a_step_summary_that_cannot_be_written_is_refused_at_configure_unless_the_report_is_off(
    pytester: pytest.Pytester, run_decodeperf: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_gen=TWO_ITEMS)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", "/nonexistent/dir/summary.md")
    result = run_decodeperf(inprocess=True)
    assert_one_usage_error_line(result, "'/nonexistent/dir' does not exist", "environment variable GITHUB_STEP_SUMMARY")
    assert run_decodeperf("-p", "no:decodeperf-markdown", "--co", inprocess=True).ret == 0  # the report turned off


def metric(decision: str, ratio: float | None, judged: bool = True) -> ABMetric:
    low, high = (None, None) if ratio is None else (ratio * 0.97, ratio * 1.03)
    return ABMetric(
        decision=decision, judged=judged, ratio=ratio, ci_low=low, ci_high=high, processes=5, pairs=60, note=""
    )


def ab_record(test: str, failed: bool, decision: str, ratio: float | None, error: str | None = None) -> ABRecord:
    metrics = {} if error else {"ms_per_token": metric(decision, ratio), "prefill_ms": metric("unknown", 1.0, False)}
    return ABRecord(
        test=test,
        ref="HEAD~1",
        a_commit="a" * 40,
        b_commit="b" * 40,
        gate_pct=5.0,
        failed=failed,
        error=error,
        metrics=metrics,
        syncs_per_step=[0.0, 0.0],
    )


def defaults(**changed: Any) -> Settings:
    values = {(spec.name.replace("-", "_") or "enabled"): spec.default for spec in OPTIONS}
    return replace(Settings(**values), **changed)


def plugin_for(settings: Settings, root: Path) -> tuple[MarkdownPlugin, Any]:
    """The report's hooks on a session that measured on the CPU, and a config as the repro command reads it."""
    dp = DecodePerfSession(settings)
    dp._device = torch.device("cpu")
    config = SimpleNamespace(
        rootpath=root,
        invocation_params=SimpleNamespace(args=(), dir=root),
        pluginmanager=SimpleNamespace(hasplugin=lambda name: False),
    )
    return MarkdownPlugin(dp), config


def test_history_and_ab_verdicts_read_worse_first_and_each_failure_has_its_command(repo: Repo) -> None:
    write(repo, 0, [make_record(ms=2.0, seed=1), make_record(cache="dynamic", ms=2.0, seed=3)])
    now = [make_record(ms=2.4, seed=2), make_record(cache="dynamic", ms=2.0, seed=3)]
    now[0]["fingerprint"] = {"torch": "2.14.0"}
    cmp = compare(repo, 1, now)
    assert cmp.failed and cmp.ref is not None
    worse = f"{TEST}[tiny-gpt2-static-baseline-b1]"
    ab = [
        ab_record("t.py::test_same", False, "same", 1.001),
        ab_record("t.py::test_broken", True, "unknown", None, error="side A: setup failed"),
        ab_record("t.py::test_slower", True, "different_worse", 1.083),
    ]
    report = Report("pytest-decodeperf on cpu", "failed", "device cpu", now, [], cmp, ab, ["A/B head", "A/B tally"])

    text = render(report)

    history = text.split("### History of", 1)[1].split("### A/B", 1)[0]
    assert f"({repo[1][0][:8]} -> this run): torch 2.13.0 -> 2.14.0" in history
    assert history.index("| worsened |") < history.index("<details>") < history.index("| unchanged |")
    assert "3 worsened, 0 improved, 3 unchanged, 0 not compared" in history
    rows = [line for line in text.split("### A/B", 1)[1].splitlines() if line.startswith("| **fails**")]
    assert "test_broken" in rows[0] and "error: side A: setup failed" in rows[0]
    assert "test_slower" in rows[1] and "1.083 [1.051, 1.115] worse" in rows[1] and "not judged" in rows[1]
    assert text.index("test_slower") < text.index("test_same") and "A/B tally" in text
    assert "`perf_tests/test_decode_matrix.py::test_cache_by_stream_mode` (stop=eos)" in text.split("### Results")[1]

    # The history's regression reproduces alone as the A/B against the history's reference commit ...
    plugin, config = plugin_for(defaults(enabled=True, compare="latest", rounds=2), repo[0])
    plugin.dp.comparison = cmp
    [history_failure] = plugin.failures(config, [])
    assert history_failure.nodeid == worse and history_failure.message.startswith(f"history: worse than {cmp.ref[:8]}")
    assert history_failure.command == (
        f"pytest '{worse}' -p no:cacheprovider -q --decodeperf --decodeperf-device=cpu --decodeperf-warmup=1 "
        f"--decodeperf-rounds=2 --decodeperf-ab={cmp.ref}"
    )
    # ... and an item the A/B failed as the A/B against the very commit it ran against.
    plugin, config = plugin_for(defaults(enabled=True, ab="HEAD~1", ab_processes=4), repo[0])
    plugin.failed = {"t.py::test_slower": "A/B against HEAD~1: ..."}
    [ab_failure] = plugin.failures(config, ab)
    assert ab_failure.command is not None
    assert ab_failure.command.endswith(f"--decodeperf-ab={'a' * 40} --decodeperf-ab-processes=4")
    assert "```bash\n" + ab_failure.command + "\n```" in render(replace(report, failures=[ab_failure]))

"""asv history from pytest runs, end to end, in a temporary git repository.

Commit 1 is recorded; commit 2 injects a slowdown through a ``decode_model`` override and must
fail ``--decodeperf-compare`` and show in ``asv publish``'s regressions; commit 3 is commit 1's
code again and must pass (A/A). Then ``asv compare`` and ``asv publish`` read what pytest wrote.

These are separate pytest processes, one after another, on a shared 2-core VM whose speed swings
by up to 50% between runs (measured; see docs/explanation/validity.md), so this test gates at 100%
and injects +20 ms on a 1-8 ms step (3x or more): it proves the plumbing and cannot flake. The
gate's statistics are unit-tested on synthetic samples (tests/test_regression.py); their live
figures come from scripts/validity_figures.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from git_helpers import git

ROOT = Path(__file__).resolve().parents[1]
CONFTEST = """
import os, time
import pytest
from pytest_decodeperf import build_model

@pytest.fixture
def decode_model(decode_variant):
    model = build_model(decode_variant.model)
    extra = float(os.environ.get("SLOWDOWN_S", "0"))
    def work(*_):  # deliberate extra work per forward (0 s on the good commits)
        end = time.perf_counter() + extra
        while time.perf_counter() < end:
            pass
    model.register_forward_hook(work)
    return model
"""
TEST = """
import pytest

@pytest.mark.decode_perf(models="tiny-gpt2", cache="dynamic", stream=("baseline", "pipelined"), new_tokens=24,
                         stop="none")
def test_decode():
    pass
"""
ARGS = [
    "--decodeperf",
    "--decodeperf-rounds=9",
    "--decodeperf-max-time=0",
    "--decodeperf-warmup=1",
    "--decodeperf-asv",
    "--decodeperf-compare",
    "--decodeperf-fail-on-regression=100",
    "--benchmark-disable",
    "-p",
    "no:cacheprovider",
]


@pytest.fixture
def repo(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # asv's machine file stays out of the real home
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two shared cores: keep torch's threads from fighting
    (tmp_path / "home").mkdir()
    path = pytester.path
    (path / "asv.conf.json").write_text((ROOT / "asv.conf.json").read_text())
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_decode=TEST)
    git(path, "init", "-q", "-b", "main")
    return path


def commit_and_run(pytester: pytest.Pytester, repo: Path, message: str, slowdown_s: float) -> pytest.RunResult:
    (repo / "notes.txt").write_text(message)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    os.environ["SLOWDOWN_S"] = str(slowdown_s)
    try:
        return pytester.runpytest_subprocess(*ARGS)
    finally:
        del os.environ["SLOWDOWN_S"]


def asv(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=repo, capture_output=True, text=True, check=False)


def test_a_slowdown_fails_the_gate_and_an_unchanged_commit_does_not(pytester: pytest.Pytester, repo: Path) -> None:
    first = commit_and_run(pytester, repo, "good", 0.0)
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(["*nothing to compare with*", "*decode perf history written to*"])
    c1 = git(repo, "rev-parse", "HEAD")
    (results,) = (repo / ".asv" / "results").glob(f"*/{c1[:8]}-decodeperf-cpu.json")
    stored = json.loads(results.read_text())["results"]
    canary = next(v for k, v in stored.items() if k.endswith(".track_drift_canary"))
    assert len(canary[-1][0]) == 2  # its samples: the canary timed as the run started and as it ended

    slow = commit_and_run(pytester, repo, "slow", 0.02)  # +20 ms per step on a 1-8 ms step: 3x or more
    assert slow.ret == pytest.ExitCode.TESTS_FAILED, slow.stdout.str()
    slow.stdout.fnmatch_lines(
        ["*Worsened:*", "*time_decode_per_token*", "*significant regression(s) worse by more than 100%*"]
    )
    c2 = git(repo, "rev-parse", "HEAD")
    # The dashboard built now shows the slowdown on its regressions page.
    pub = subprocess.run(
        [sys.executable, "-m", "pytest_decodeperf", "publish"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pub.returncode == 0, pub.stderr + pub.stdout
    regressions = json.loads((repo / ".asv/html/regressions.json").read_text())
    assert any("time_decode_per_token" in json.dumps(r) for r in regressions["regressions"]), regressions
    index = json.loads((repo / ".asv/html/index.json").read_text())
    assert any(name.endswith("time_decode_per_token") for name in index["benchmarks"])

    same = commit_and_run(pytester, repo, "good again", 0.0)
    # Compared with the slow commit it improved; against commit 1 it must not regress.
    same.assert_outcomes(passed=2)
    same.stdout.fnmatch_lines(["*Improved:*"])
    compare_c1 = [*(a for a in ARGS if a != "--decodeperf-compare"), f"--decodeperf-compare={c1[:8]}"]
    again = pytester.runpytest_subprocess(*compare_c1)
    assert again.ret == 0, again.stdout.str()
    assert "significant regression" not in again.stdout.str()

    # asv itself reads the files pytest wrote.
    cmp = asv(repo, "compare", c1, c2, "--factor", "1.05", "--machine", os.uname().nodename)
    assert cmp.returncode == 0, cmp.stderr
    assert "time_decode_per_token" in cmp.stdout and "+" in cmp.stdout


def test_outside_a_git_checkout_the_tests_run_and_history_is_skipped_with_a_reason(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(pytester.path.parent))
    (pytester.path / "asv.conf.json").write_text((ROOT / "asv.conf.json").read_text())
    pytester.makepyfile(test_decode=TEST.replace("new_tokens=24", "new_tokens=8"))
    result = pytester.runpytest_subprocess(
        "--decodeperf",
        "--decodeperf-rounds=2",
        "--decodeperf-max-time=0",
        "--decodeperf-warmup=0",
        "--decodeperf-asv",
        "--benchmark-disable",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*is not a git checkout: asv files results by commit*"])
    assert not (pytester.path / ".asv").exists()


def test_a_missing_asv_config_is_one_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_decode=TEST)
    result = pytester.runpytest_subprocess("--decodeperf", "--decodeperf-asv", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-decodeperf: asv config asv.conf.json not found*"])
    assert "Traceback" not in result.stderr.str()

"""``decodeperf bisect``: the search and its report on fake steps, bad input, and one live bisection.

The live test bisects a temporary repository of three commits (``test_ab.py``'s test file and
conftest, one variant): good, one that adds ~8 ms of busy work to every forward of tiny-gpt2 (a
slowdown of several times, which no noise here reaches), and a harmless one after it (BAD). The
bisection must name the middle commit, with each step's A/B evidence, and leave the checkout and
git's worktree list as they were. The parity path is the same plumbing with a plain run per step:
tested here on canned session output, no process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from git_helpers import git
from test_ab import CONFTEST, TEST

from pytest_decodeperf.ab import bisect_steps, bisection
from pytest_decodeperf.ab.bisect_steps import Commit, Outcome, Sessions, Step
from pytest_decodeperf.ab.bisection import Bisection, report, search

COMMITS = [Commit(f"{i:02d}" * 20, f"change {i}") for i in range(1, 9)]  # 8 commits after GOOD
GOOD = Commit("00" * 20, "good")


def fake_judge(outcomes: dict[int, Outcome], judged: list[int]) -> bisection.Judge:
    def judge(commit: Commit) -> Step:
        i = COMMITS.index(commit)
        judged.append(i)
        ratio = 1.3 if outcomes[i] is Outcome.BAD else 1.0
        return Step(commit, outcomes[i], [f"test_x: ms/token x{ratio}"], ratio)

    return judge


def answer(outcomes: dict[int, Outcome]) -> tuple[Bisection, list[int], list[str], int]:
    judged: list[int] = []
    said: list[str] = []
    result = search(Bisection(GOOD, list(COMMITS), "speed"), fake_judge(outcomes, judged), said.append)
    code = report(result, said.append)
    return result, judged, said, code


def test_the_first_bad_commit_of_eight_takes_bad_plus_three_steps() -> None:
    outcomes = {i: Outcome.BAD if i >= 5 else Outcome.GOOD for i in range(8)}
    result, judged, said, code = answer(outcomes)
    assert code == 0 and result.culprit is not None and result.culprit.commit == COMMITS[5]
    assert judged == [7, 3, 5, 4]  # BAD first, then halving
    assert f"first bad commit: {COMMITS[5].sha} 'change 6'" in said
    assert "    measured x1.300 ms/token against GOOD 00000000; the commit before it x1.000" in said
    assert said[0] == "step 1: BAD 08080808 'change 8': bad"


def test_bad_not_worse_is_nothing_to_bisect_and_an_undecided_step_stops_naming_the_range() -> None:
    result, judged, said, code = answer(dict.fromkeys(range(8), Outcome.GOOD))
    assert code == 0 and judged == [7] and said[-1] == "BAD 08080808 is not worse than GOOD 00000000: nothing to bisect"
    outcomes = {i: Outcome.BAD if i >= 5 else Outcome.GOOD for i in range(8)} | {5: Outcome.UNKNOWN}
    result, judged, said, code = answer(outcomes)
    assert code == 1 and judged == [7, 3, 5] and result.culprit is None
    assert result.between == (COMMITS[3], COMMITS[7])
    assert "is after 04040404 and at or before 08080808 (4 commit(s))" in said[-1]
    assert json.loads(json.dumps(result.as_json()))["between"] == [COMMITS[3].sha, COMMITS[7].sha]


def canned(sessions_json: dict[str, Any], log: str) -> Any:
    def run(self: Sessions, commit: Commit, extra: list[str], what: str) -> tuple[int, dict[str, Any], Path]:
        path = self.log_dir / f"{what}.log"
        path.write_text(log)
        return (1 if "FAILED" in log else 0), sessions_json, path

    return run


def test_a_parity_step_is_bad_on_a_token_mismatch_and_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [{"test": "t.py::test_x[a]", "parity": "pass"}, {"test": "t.py::test_x[b]", "parity": "fail"}]
    log = "FAILED t.py::test_x[b] - parity: row 0 differs from generate() at position 3\n"
    monkeypatch.setattr(Sessions, "run", canned({"results": records}, log))
    sessions = Sessions(tmp_path, Path("."), (), tmp_path, print)
    step = bisect_steps.parity_step(sessions, COMMITS[0])
    assert step.outcome is Outcome.BAD
    assert step.evidence == ["test_x[b]: parity fail: parity: row 0 differs from generate() at position 3"]
    monkeypatch.setattr(Sessions, "run", canned({"results": records[:1]}, ""))
    assert bisect_steps.parity_step(sessions, COMMITS[0]).outcome is Outcome.GOOD


def ab_record(decision: str, ratio: float, failed: bool = False, error: str | None = None) -> dict[str, Any]:
    ms = {"decision": decision, "ratio": ratio, "ci_low": ratio * 0.9, "ci_high": ratio * 1.1, "pairs": 20}
    ms |= {"processes": 4, "note": ""}
    return {"test": "t.py::test_x[a]", "gate_pct": 5.0, "failed": failed, "error": error, "syncs_per_step": [0, 0]} | {
        "metrics": {"ms_per_token": ms}
    }


@pytest.mark.parametrize(
    ("records", "outcome"),
    [
        ([ab_record("different_worse", 1.3, failed=True), ab_record("unknown", 1.0)], Outcome.BAD),
        ([ab_record("same", 1.01), ab_record("different_better", 0.8)], Outcome.GOOD),
        ([ab_record("same", 1.01), ab_record("unknown", 1.03)], Outcome.UNKNOWN),
        ([ab_record("same", 1.01), ab_record("unknown", 1.0, failed=True, error="side A: died")], Outcome.UNKNOWN),
        ([], Outcome.UNKNOWN),
    ],
)
def test_a_speed_step_reads_the_ab_verdicts(
    records: list[dict[str, Any]], outcome: Outcome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Sessions, "run", canned({"ab": records} if records else {}, "no tests ran\n"))
    step = bisect_steps.speed_step(Sessions(tmp_path, Path("."), (), tmp_path, print), GOOD, COMMITS[0])
    assert step.outcome is outcome
    if records and not records[-1]["error"]:
        assert step.evidence[0] == "test_x[a]: ms/token " + (
            "worse x1.300 (99% CI 1.170-1.430, 4 process pairs, 20 pairs)"
            if outcome is Outcome.BAD
            else "same x1.010 (99% CI 0.909-1.111, 4 process pairs, 20 pairs)"
        )
    if not records:
        assert step.evidence == ["no verdict (pytest exited 0): no tests ran"]


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """good, two more commits; a side branch."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for name in ("good", "second", "third"):
        (repo / "f.txt").write_text(name)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", name)
    git(repo, "checkout", "-q", "-b", "side", "HEAD~1")
    (repo / "g.txt").write_text("side")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "side")
    git(repo, "checkout", "-q", "main")
    return repo


def cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest_decodeperf", "bisect", *args]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["nosuch", "HEAD"], "decodeperf bisect: GOOD 'nosuch' is not a commit of {repo}"),
        (["HEAD", "HEAD~2"], "decodeperf bisect: GOOD HEAD (*) is not an ancestor of BAD HEAD~2 (*): bisect walks*"),
        (["side", "main"], "decodeperf bisect: GOOD side (*) is not an ancestor of BAD main (*)*"),
        (["HEAD", "main"], "decodeperf bisect: GOOD and BAD are the same commit (*): nothing to bisect"),
        (["HEAD~2", "HEAD", "--decodeperf-ab=HEAD"], "decodeperf bisect: --decodeperf-ab is bisect's own*: drop it"),
    ],
)
def test_bad_input_is_one_line(history: Path, args: list[str], said: str) -> None:
    proc = cli(history, *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    import fnmatch

    assert fnmatch.fnmatch(proc.stderr.strip(), said.format(repo=history)), proc.stderr


def test_outside_a_git_checkout_is_one_line(tmp_path: Path) -> None:
    proc = cli(tmp_path, "v1", "v2")
    assert proc.returncode == 2 and proc.stderr.strip() == f"decodeperf bisect: {tmp_path} is not inside a git checkout"


def test_auto_mode_bisects_parity_when_bad_fails_it_and_refuses_a_good_that_fails_too(
    history: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow around the steps, on fake steps: parity at BAD decides the mode, GOOD is checked first."""
    shas = git(history, "rev-list", "--reverse", "main").split()
    broken = {shas[2]}  # only the third commit's tokens differ
    calls: list[str] = []

    def parity(sessions: Sessions, commit: Commit) -> Step:
        calls.append(commit.short)
        return Step(commit, Outcome.BAD if commit.sha in broken else Outcome.GOOD, ["test_x[a]: parity"])

    monkeypatch.setattr(bisection, "parity_step", parity)
    monkeypatch.setattr(bisection, "speed_step", lambda *a: pytest.fail("no A/B when BAD fails parity"))
    monkeypatch.chdir(history)
    said: list[str] = []
    result = bisection.run(shas[0], shas[2], "auto", [], said.append)
    assert result.mode == "parity" and result.culprit is not None and result.culprit.commit.sha == shas[2]
    assert calls == [shas[2][:8], shas[0][:8], shas[1][:8]]  # BAD, GOOD, then the one between
    assert "bisecting the first commit whose tokens differ" in said
    broken.add(shas[0])
    with pytest.raises(bisection.DecodePerfError, match="GOOD .* does not pass parity either .*pick an earlier GOOD"):
        bisection.run(shas[0], shas[2], "auto", [], said.append)


def test_a_bisection_over_three_commits_names_the_slow_one_and_leaves_the_checkout_alone(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    repo = pytester.path
    git(repo, "init", "-q", "-b", "main")
    pytester.makepyfile(test_decode=TEST)
    for name, slowdown in (("good", 0.0), ("slower forward", 0.008)):
        pytester.makeconftest(CONFTEST.format(slowdown=slowdown))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", name)
    (repo / "notes.txt").write_text("harmless\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "notes")
    culprit = git(repo, "rev-parse", "HEAD~1")
    (repo / "notes.txt").write_text("an uncommitted edit\n")  # must survive, and take no part
    budget = ["--decodeperf-ab-processes=3", "--decodeperf-ab-max-pairs=15", "-p", "no:cacheprovider", "-k", "baseline"]
    proc = cli(repo, "HEAD~2", "HEAD", *budget, "--json", "bisect.json")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "note: the checkout has uncommitted changes; they take no part (every step is a commit)" in out
    assert "parity at BAD" in out and "passes" in out
    assert f"first bad commit: {culprit} 'slower forward'" in out
    result = json.loads((repo / "bisect.json").read_text())
    assert result["culprit"] == culprit and result["mode"] == "speed"
    assert [s["outcome"] for s in result["steps"]] == ["bad", "bad"]
    assert all(s["ratio"] > 1.5 and "ms/token worse x" in s["evidence"][0] for s in result["steps"])
    assert (repo / "notes.txt").read_text() == "an uncommitted edit\n"
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert len(git(repo, "worktree", "list").splitlines()) == 1

"""One step of ``decodeperf bisect`` (``bisection.py``): a pytest session at one commit, read as good or bad.

A *speed* step is the same-session A/B (``--decodeperf-ab=GOOD``) run in a temporary worktree of the
commit: its process pairs and verdicts, not one timing, decide. The commit is **bad** when an item
failed on a slowdown (a metric significantly worse beyond the gate, or more syncs per step), **good**
when every item's ms/token is shown *same* or *better*, and **unknown** otherwise (the A/B's own
UNKNOWN, an item a side could not measure, a session that gave no verdict): the bisection stops there.

A *parity* step is a plain run (one round per variant: parity needs one generation): **bad** when an
item's tokens differ from transformers' generate(), **good** when every item passes parity.

Each session's output goes to a log; the A/B's progress lines are echoed as they come.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import DecodePerfError
from .checkout import worktree_at
from .decision import Decision, Verdict

USAGE_ERROR = 4  # pytest's exit code for a command line it refuses


class Outcome(str, Enum):
    GOOD = "good"
    BAD = "bad"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str

    @property
    def short(self) -> str:
        return self.sha[:8]


@dataclass
class Step:
    """A commit's outcome and its evidence: one line per item (its verdict), and the A/B's worst ratio."""

    commit: Commit
    outcome: Outcome
    evidence: list[str] = field(default_factory=list)
    ratio: float | None = None  # the largest ms/token B/A of the step's items (speed steps)
    log: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit.sha,
            "subject": self.commit.subject,
            "outcome": self.outcome.value,
            "ratio": self.ratio,
            "evidence": self.evidence,
        }


class UsageRefused(DecodePerfError):
    """The session refused its command line: bad input, the same at every commit, so the bisection stops."""


@dataclass(frozen=True)
class Sessions:
    """How to run a step's session: where (the checkout's top, pytest's directory in it), with what."""

    top: Path
    rel: Path  # the directory pytest runs in, relative to ``top`` (the test paths are relative to it)
    pytest_args: tuple[str, ...]
    log_dir: Path
    echo: Callable[[str], None]

    def run(self, commit: Commit, extra: list[str], what: str) -> tuple[int, dict[str, Any], Path]:
        """pytest ``pytest_args + extra`` at ``commit``: (exit code, its --decodeperf-json, its log)."""
        out = self.log_dir / f"{what}-{commit.short}.json"
        log = self.log_dir / f"{what}-{commit.short}.log"
        out.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("DECODEPERF_AB", "DECODEPERF_JSON")}
        if what == "parity":
            env.pop("DECODEPERF_AB_PYTHON", None)  # a plain run: an A/B of environments would start otherwise
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        cmd = [sys.executable, "-m", "pytest", *self.pytest_args, "--decodeperf", *extra, f"--decodeperf-json={out}"]
        with worktree_at(self.top, commit.sha, f"decodeperf bisect: could not check out {commit.short}") as tree:
            with open(log, "w") as sink:
                proc = subprocess.Popen(
                    cmd, cwd=tree / self.rel, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                assert proc.stdout is not None
                for line in proc.stdout:
                    sink.write(line)
                    if line.startswith("A/B process pair "):
                        self.echo(f"    {line.rstrip()}")
                code = proc.wait()
        if code == USAGE_ERROR:
            text = log.read_text(errors="replace").splitlines()
            said = next((x for x in text if x.startswith("ERROR: ")), text[-1] if text else "no output")
            raise UsageRefused(f"pytest refused the command line at {commit.short}: {said.removeprefix('ERROR: ')}")
        data = json.loads(out.read_text()) if out.exists() else {}
        return code, data, log


def _label(nodeid: str) -> str:
    return nodeid.split("::")[-1]


def _message(metric: dict[str, Any], gate_pct: float) -> str:
    """The A/B's own words for one metric's verdict, rebuilt from its record."""

    def num(x: float | None) -> float:
        return math.nan if x is None else float(x)

    verdict = Verdict(
        Decision(metric["decision"]),
        num(metric["ratio"]),
        num(metric["ci_low"]),
        num(metric["ci_high"]),
        int(metric["pairs"]),
        gate_pct / 100.0,
        0.99,
        str(metric["note"]),
        int(metric["processes"]),
    )
    return verdict.message()


def _no_verdict(commit: Commit, code: int, log: Path) -> Step:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    last = lines[-1].strip() if lines else "no output"
    return Step(commit, Outcome.UNKNOWN, [f"no verdict (pytest exited {code}): {last}"], log=str(log))


def speed_step(sessions: Sessions, good: Commit, commit: Commit) -> Step:
    """The A/B of ``commit`` against GOOD, read as a step (see the module docstring)."""
    code, data, log = sessions.run(commit, [f"--decodeperf-ab={good.sha}"], "ab")
    records = data.get("ab") or []
    if not records:
        return _no_verdict(commit, code, log)
    evidence, worse, errors, undecided = [], False, False, False
    ratios = []
    for record in records:
        ms = record["metrics"].get("ms_per_token")
        if record["error"]:
            errors = True
            evidence.append(f"{_label(record['test'])}: error: {record['error']}")
            continue
        said = f"ms/token {_message(ms, record['gate_pct'])}" if ms else "ms/token not timed"
        syncs = record["syncs_per_step"]
        if None not in syncs and syncs[1] > syncs[0]:
            said += f"; syncs/step {syncs[0]:g} -> {syncs[1]:g} (rose)"
        evidence.append(f"{_label(record['test'])}: {said}")
        worse |= bool(record["failed"])
        undecided |= ms is None or ms["decision"] not in (Decision.SAME.value, Decision.DIFFERENT_BETTER.value)
        if ms and ms["ratio"] is not None:
            ratios.append(float(ms["ratio"]))
    outcome = Outcome.BAD if worse else Outcome.UNKNOWN if errors or undecided else Outcome.GOOD
    return Step(commit, outcome, evidence, max(ratios) if ratios else None, str(log))


PARITY_ARGS = ["--decodeperf-rounds=1", "--decodeperf-max-time=0", "--decodeperf-warmup=0", "-rf"]


def parity_step(sessions: Sessions, commit: Commit) -> Step:
    """A plain run at ``commit``: bad when an item's tokens differ from generate()'s (see the module docstring)."""
    code, data, log = sessions.run(commit, PARITY_ARGS, "parity")
    records = data.get("results") or []
    if not records:
        return _no_verdict(commit, code, log)
    reasons = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("FAILED ") and " - " in line:
            nodeid, _, why = line.removeprefix("FAILED ").partition(" - ")
            reasons[nodeid.strip()] = why.strip()
    failing = [r for r in records if r.get("parity") == "fail"]
    evidence = [f"{_label(r['test'])}: parity fail: {reasons.get(r['test'], 'tokens differ')}" for r in failing]
    if failing:
        return Step(commit, Outcome.BAD, evidence, log=str(log))
    passed = sum(r.get("parity") == "pass" for r in records)
    if not passed:
        return Step(commit, Outcome.UNKNOWN, ["no item's parity was checked"], log=str(log))
    return Step(commit, Outcome.GOOD, [f"{passed} item(s) pass parity"], log=str(log))

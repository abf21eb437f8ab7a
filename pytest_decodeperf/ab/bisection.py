"""``decodeperf bisect GOOD BAD [pytest args]``: the first commit that made decoding slower, or broke parity.

A red nightly asks which change did it. This walks the first-parent commits after GOOD up to BAD by
binary search, each step a pytest session in a temporary worktree of one commit (``bisect_steps.py``):

* **speed** (the default): each step is the same-session A/B of the commit against GOOD, so a step is
  decided by process pairs and verdicts, not by one timing. BAD is measured first: if it is not worse
  than GOOD there is nothing to bisect, said in one line. A step the A/B cannot decide (UNKNOWN, an
  item it could not measure) stops the bisection there, naming the commits the culprit still lies
  between: a guess would send someone to read the wrong diff.
* **parity**: each step is a plain run; bad means an item's tokens differ from transformers'
  generate(). GOOD is checked to pass first.
* **auto**: one plain run at BAD decides which: parity when BAD fails parity, else speed.

The first bad commit is named with its measured ratio against GOOD and the evidence of every step.
The user's checkout is never touched (every commit is checked out in a worktree of its own, removed
after its step), so uncommitted changes take no part. Exit status: 0 when it found the first bad
commit or that there is nothing to bisect; 1 when a step could not be decided; 2 on bad input.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DecodePerfError
from ..git import git
from .bisect_steps import Commit, Outcome, Sessions, Step, parity_step, speed_step

Judge = Callable[[Commit], Step]
_WHAT = {"speed": "commit worse than GOOD (an A/B at each step)", "parity": "commit whose tokens differ"}


@dataclass
class Bisection:
    """The steps so far and what they prove: the culprit, or the commits it still lies between."""

    good: Commit
    commits: list[Commit]  # after GOOD, up to BAD (the last), oldest first
    mode: str
    steps: list[Step] = field(default_factory=list)
    culprit: Step | None = None
    last_good: Step | None = None
    between: tuple[Commit, Commit] | None = None  # undecided: the culprit is after the first, up to the second
    nothing: str = ""  # why there is nothing to bisect
    log_dir: Path | None = None  # the sessions' logs and records

    def clean(self) -> None:
        """The logs go once the answer is in (the evidence was said); an undecided step's stay for reading."""
        if self.log_dir is not None and self.between is None:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def as_json(self) -> dict[str, Any]:
        return {
            "good": self.good.sha,
            "bad": self.commits[-1].sha,
            "mode": self.mode,
            "commits": [c.sha for c in self.commits],
            "steps": [s.as_json() for s in self.steps],
            "culprit": self.culprit.commit.sha if self.culprit else None,
            "between": [c.sha for c in self.between] if self.between else None,
            "nothing": self.nothing or None,
        }


def search(bisection: Bisection, judge: Judge, say: Callable[[str], None], first: Step | None = None) -> Bisection:
    """Binary search over ``bisection.commits``: BAD (the last) must be bad, GOOD is good by definition.

    ``first`` is BAD's step when it was already judged (auto mode's parity check). Stops at the first
    step that is neither good nor bad.
    """
    commits = bisection.commits

    def step(i: int) -> Step:
        result = first if i == len(commits) - 1 and first is not None else judge(commits[i])
        bisection.steps.append(result)
        where = "BAD " if i == len(commits) - 1 else ""
        say(f"step {len(bisection.steps)}: {where}{_named(commits[i])}: {result.outcome.value}")
        for line in result.evidence:
            say(f"    {line}")
        return result

    bad = step(len(commits) - 1)
    if bad.outcome is Outcome.GOOD:
        what = f"is not worse than GOOD {bisection.good.short}" if bisection.mode == "speed" else "passes parity"
        bisection.nothing = f"BAD {commits[-1].short} {what}: nothing to bisect"
        return bisection
    lo, hi, hi_step = -1, len(commits) - 1, bad  # commits[lo] good (-1: GOOD itself), commits[hi] bad
    if bad.outcome is Outcome.UNKNOWN:
        bisection.between = (bisection.good, commits[-1])
        return bisection
    while hi - lo > 1:
        mid = (lo + hi) // 2
        result = step(mid)
        if result.outcome is Outcome.BAD:
            hi, hi_step = mid, result
        elif result.outcome is Outcome.GOOD:
            lo, bisection.last_good = mid, result
        else:
            bisection.between = (commits[lo] if lo >= 0 else bisection.good, commits[hi])
            return bisection
    bisection.culprit = hi_step
    return bisection


def _named(commit: Commit) -> str:
    return f"{commit.short} {commit.subject!r}"


def report(bisection: Bisection, say: Callable[[str], None]) -> int:
    """The answer in a few lines, and the exit status."""
    if bisection.nothing:
        say(bisection.nothing)
        return 0
    if bisection.between is not None:
        lo, hi = bisection.between
        shas = [c.sha for c in bisection.commits]
        inside = shas.index(hi.sha) - (shas.index(lo.sha) if lo.sha in shas else -1)
        say(
            f"undecided: step {len(bisection.steps)} could not be judged (see its evidence); the first bad commit "
            f"is after {lo.short} and at or before {hi.short} ({inside} commit(s)): rerun the bisection on that "
            "range, with a larger budget (--decodeperf-ab-processes) for a speed step"
        )
        return 1
    assert bisection.culprit is not None
    culprit = bisection.culprit
    say(f"first bad commit: {culprit.commit.sha} {culprit.commit.subject!r}")
    if culprit.ratio is not None:
        before = bisection.last_good
        after = f"; the commit before it x{before.ratio:.3f}" if before is not None and before.ratio is not None else ""
        say(f"    measured x{culprit.ratio:.3f} ms/token against GOOD {bisection.good.short}{after}")
    for line in culprit.evidence:
        say(f"    {line}")
    return 0


def commits_between(top: Path, good_ref: str, bad_ref: str) -> tuple[Commit, list[Commit]]:
    """GOOD and the first-parent commits after it up to BAD; DecodePerfError with one line on bad input."""
    shas = []
    for name, ref in (("GOOD", good_ref), ("BAD", bad_ref)):
        sha = git(top, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        if sha is None:
            raise DecodePerfError(f"{name} {ref!r} is not a commit of {top}")
        shas.append(sha)
    good, bad = shas
    if good == bad:
        raise DecodePerfError(f"GOOD and BAD are the same commit ({good[:8]}): nothing to bisect")
    if not _is_ancestor(top, good, bad):
        raise DecodePerfError(
            f"GOOD {good_ref} ({good[:8]}) is not an ancestor of BAD {bad_ref} ({bad[:8]}): bisect walks the "
            "commits from GOOD to BAD; give the older commit first"
        )
    listed = git(top, "log", "--first-parent", "--reverse", "--format=%H %s", f"{good}..{bad}") or ""
    commits = [Commit(sha, subject) for sha, _, subject in (line.partition(" ") for line in listed.splitlines())]
    subject = git(top, "log", "-1", "--format=%s", good) or ""
    return Commit(good, subject), commits


def _is_ancestor(top: Path, a: str, b: str) -> bool:
    """``git merge-base --is-ancestor`` prints nothing either way: its exit status is the answer."""
    return subprocess.run(["git", "merge-base", "--is-ancestor", a, b], cwd=top, capture_output=True).returncode == 0


def run(good_ref: str, bad_ref: str, mode: str, pytest_args: Sequence[str], say: Callable[[str], None]) -> Bisection:
    """The whole bisection from the current directory (see the module docstring)."""
    cwd = Path.cwd()
    top_text = git(cwd, "rev-parse", "--show-toplevel")
    if top_text is None:
        raise DecodePerfError(f"{cwd} is not inside a git checkout")
    top = Path(top_text).resolve()
    for arg in pytest_args:
        if arg == "--decodeperf-ab" or arg.startswith(("--decodeperf-ab=", "--decodeperf-json")):
            raise DecodePerfError(f"{arg.split('=')[0]} is bisect's own (the A/B is against GOOD): drop it")
    good, commits = commits_between(top, good_ref, bad_ref)
    if git(top, "status", "--porcelain", "--untracked-files=no") is not None:
        say("note: the checkout has uncommitted changes; they take no part (every step is a commit)")
    log_dir = Path(tempfile.mkdtemp(prefix="decodeperf-bisect-"))
    args = tuple(pytest_args)
    sessions = Sessions(top, cwd.resolve().relative_to(top), args, log_dir, say)
    say(
        f"decodeperf bisect: {len(commits)} commit(s) after GOOD {_named(good)} up to BAD {_named(commits[-1])} "
        f"(first parents); sessions: pytest {' '.join(args)} (logs in {log_dir})"
    )
    plain = Sessions(top, sessions.rel, _plain(args), log_dir, say)
    first = None
    if mode == "auto":
        first = parity_step(plain, commits[-1])
        if first.outcome is Outcome.UNKNOWN and first.evidence[0].startswith("no verdict"):
            raise DecodePerfError(f"the plain run at BAD {commits[-1].short} gave {first.evidence[0]}")
        mode = "parity" if first.outcome is Outcome.BAD else "speed"
        said = {Outcome.BAD: "fails", Outcome.GOOD: "passes", Outcome.UNKNOWN: "was not checked"}[first.outcome]
        say(f"parity at BAD {commits[-1].short}: {said}")
        first = first if mode == "parity" else None
    say(f"bisecting the first {_WHAT[mode]}")
    bisection = Bisection(good, commits, mode, log_dir=log_dir)
    if mode == "parity":
        at_good = parity_step(plain, good)
        if at_good.outcome is not Outcome.GOOD:
            raise DecodePerfError(
                f"GOOD {good.short} does not pass parity either ({at_good.outcome.value}: "
                f"{'; '.join(at_good.evidence[:1])}): pick an earlier GOOD"
            )
        return search(bisection, lambda c: parity_step(plain, c), say, first)
    return search(bisection, lambda c: speed_step(sessions, good, c), say)


def _plain(args: Sequence[str]) -> tuple[str, ...]:
    """The user's arguments for a plain run: without the A/B's own options (they would start one)."""
    return tuple(a for a in args if not a.startswith("--decodeperf-ab"))


def write_json(path: Path, bisection: Bisection) -> None:
    path.write_text(json.dumps(bisection.as_json(), indent=2) + "\n")

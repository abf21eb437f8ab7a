"""Keep asv history on a git branch that several machines push to: pull it, push to it, lose nothing.

``decodeperf history-pull`` clones the results branch into the results directory (or starts an
empty one when the branch does not exist yet); ``decodeperf history-push`` commits what this run
added and pushes it, and when another machine pushed first, rebases onto it and tries again. Each
machine writes only its own ``<machine>/`` folder, so a rebase replays cleanly; ``benchmarks.json``,
shared by all, is merged key by key (the branch's entry wins a tie: it is the same definition).
Any other conflict (two runners with one machine name) stops with one line, nothing pushed.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import DecodePerfError

SHARED = "benchmarks.json"
TRAILER = "Decodeperf-Commit"  # on each results commit: the code commit it measured


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        ["git", "-c", "user.name=decodeperf", "-c", "user.email=decodeperf@localhost", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and out.returncode != 0:
        reason = (out.stderr.strip() or out.stdout.strip() or "failed").splitlines()[-1]
        raise DecodePerfError(f"git {' '.join(args[:2])} in {repo}: {reason}")
    return out


def pull(remote: str, branch: str, into: Path) -> str:
    """Clone ``branch`` of ``remote`` into ``into`` (new or empty); an absent branch starts an empty history."""
    if Path(remote).exists():  # a local path: relative to the caller, not to ``into``
        remote = str(Path(remote).resolve())
    if into.exists() and any(into.iterdir()):
        raise DecodePerfError(f"{into} is not empty: history-pull clones into a new or empty directory")
    into.mkdir(parents=True, exist_ok=True)
    has_branch = _git(into, "ls-remote", "--exit-code", "--heads", remote, branch, check=False)
    if has_branch.returncode == 0:
        _git(into, "clone", "-q", "--branch", branch, "--single-branch", remote, ".")
        return f"history of {branch} restored into {into}"
    if has_branch.returncode != 2:  # 2: reachable, no such branch
        reason = (has_branch.stderr.strip().splitlines() or ["git ls-remote failed"])[-1]
        raise DecodePerfError(f"cannot read {remote}: {reason}")
    _git(into, "init", "-q")
    _git(into, "checkout", "-q", "-b", branch)
    _git(into, "remote", "add", "origin", remote)
    return f"{remote} has no branch {branch} yet: {into} starts an empty history"


def merge_definitions(theirs: dict[str, object], ours: dict[str, object]) -> dict[str, object]:
    """benchmarks.json of both sides: every key of either, the branch's value on a tie."""
    return {**ours, **theirs}


def _resolve_rebase(repo: Path) -> None:
    """Finish a rebase whose only conflicts are in benchmarks.json (merged key by key)."""
    while True:
        conflicted = _git(repo, "diff", "--name-only", "--diff-filter=U").stdout.split()
        others = [name for name in conflicted if name != SHARED]
        if others:
            _git(repo, "rebase", "--abort", check=False)
            raise DecodePerfError(
                f"conflicts outside {SHARED} ({', '.join(others)}): do two runners share a machine name?"
            )
        try:
            if SHARED in conflicted:
                theirs = json.loads(_git(repo, "show", f"HEAD:{SHARED}").stdout)
                ours = json.loads(_git(repo, "show", f"REBASE_HEAD:{SHARED}").stdout)
                write_json_atomic(repo / SHARED, merge_definitions(theirs, ours))
                _git(repo, "add", SHARED)
        except (DecodePerfError, ValueError) as exc:
            _git(repo, "rebase", "--abort", check=False)
            raise DecodePerfError(f"could not merge {SHARED} of both sides: {exc}") from None
        step = _git(repo, "-c", "core.editor=true", "rebase", "--continue", check=False)
        if step.returncode == 0:
            return
        if not _git(repo, "diff", "--name-only", "--diff-filter=U").stdout.split():
            _git(repo, "rebase", "--abort", check=False)
            reason = (step.stderr.strip().splitlines() or ["git rebase --continue failed"])[-1]
            raise DecodePerfError(f"rebase stopped in {repo}: {reason}")


def last_commit(repo: Path) -> str | None:
    """The code commit the newest results commit on the branch measured (its trailer), if any."""
    out = _git(repo, "log", "-50", f"--format=%(trailers:key={TRAILER},valueonly)", check=False).stdout
    return next((line.strip() for line in out.splitlines() if line.strip()), None)


def push(
    repo: Path,
    branch: str,
    message: str,
    attempts: int = 5,
    pause_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    commit: str | None = None,
) -> str:
    """Commit everything new in ``repo`` and push it to ``origin/branch``, rebasing on refusal.

    ``commit``: the code commit these results measured, kept as a trailer for ``last_commit``.
    """
    if not (repo / ".git").exists():
        raise DecodePerfError(f"{repo} is not a git checkout of the results branch (run decodeperf history-pull)")
    _git(repo, "add", "-A", ".")
    if _git(repo, "diff", "--cached", "--quiet", check=False).returncode == 0:
        return "no new results to push"
    _git(repo, "commit", "-q", "-m", message + (f"\n\n{TRAILER}: {commit}" if commit else ""))
    for attempt in range(1, attempts + 1):
        if _git(repo, "push", "-q", "origin", f"HEAD:refs/heads/{branch}", check=False).returncode == 0:
            return f"results pushed to {branch}" + (f" (attempt {attempt})" if attempt > 1 else "")
        fetched = _git(repo, "fetch", "-q", "origin", branch, check=False)
        if fetched.returncode == 0 and _git(repo, "rebase", "-q", "FETCH_HEAD", check=False).returncode != 0:
            _resolve_rebase(repo)
        sleep(pause_s * attempt)
    raise DecodePerfError(f"could not push the results to {branch} after {attempts} attempts")

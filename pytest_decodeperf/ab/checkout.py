"""The two sides of an A/B run as git sees them: A is a commit (REF) in a temporary worktree, B the checkout.

Every check that can refuse the run happens here, before a worker starts, and says one line: not a
git checkout, a REF that is not a commit, uncommitted changes (B must be a commit too, or the
verdict would name a commit that was never measured), a REF where a collected test file is missing.
The worktree is removed on exit whatever happened, so nothing is left half-made in the repository.

With ``--decodeperf-ab-python`` side A runs with another interpreter; without a REF both sides run
the checkout's own files (no worktree, no commit needed: only the environment differs).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DecodePerfError
from ..git import git


@dataclass(frozen=True)
class Sides:
    """The checkout (``top``, git's top level), where pytest runs inside it, and both commits."""

    top: Path
    rootdir: Path  # pytest's rootdir, inside ``top``
    ref: str  # as the user gave it, or the default's name ("" when only the environment differs)
    a_commit: str  # "" outside git (an environment A/B needs none)
    b_commit: str
    python: str | None = None  # side A's interpreter (None: this one)

    @property
    def same_code(self) -> bool:
        """Both sides run the checkout's files: only the interpreter (the environment) differs."""
        return not self.ref

    @property
    def against(self) -> str:
        """What B is judged against, in the words of a failed item's line."""
        if self.same_code:
            return f"{self.python}"
        return self.ref + (f" with {self.python}" if self.python else "")

    @property
    def label(self) -> str:
        if self.same_code:
            b = f"B = the checkout{self.short(self.b_commit)} with {sys.executable}"
            return f"{b} against A = the checkout with {self.python}"
        a = f"A = {self.a_commit[:8]} ({self.ref})" + (f" with {self.python}" if self.python else "")
        return f"B = {self.b_commit[:8]} (the checkout) against {a}"

    @staticmethod
    def short(commit: str) -> str:
        return f" ({commit[:8]})" if commit else ""


def default_ref(top: Path) -> str:
    """HEAD~1; on a branch other than the default one, the merge base with the default branch."""
    branch = git(top, "symbolic-ref", "--quiet", "--short", "HEAD")
    default = _default_branch(top)
    if branch is not None and default is not None and branch != default.split("/")[-1]:
        base = git(top, "merge-base", "HEAD", default)
        if base is not None and base != git(top, "rev-parse", "HEAD"):
            return base
    return "HEAD~1"


def _default_branch(top: Path) -> str | None:
    remote_head = git(top, "symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD")
    if remote_head is not None:
        return remote_head
    for name in ("main", "master"):
        if git(top, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}") is not None:
            return name
    return None


def resolve_sides(rootdir: Path, ref: str | None, python: str | None = None) -> Sides:
    """Check the checkout and REF (empty: the default; None: no REF, only ``python`` differs); raise
    DecodePerfError with one line."""
    if ref is None:
        if python is None:
            raise DecodePerfError("an A/B needs --decodeperf-ab=REF, --decodeperf-ab-python=PATH or both")
        top_text = git(rootdir, "rev-parse", "--show-toplevel")
        head = git(rootdir, "rev-parse", "--verify", "--quiet", "HEAD^{commit}") if top_text else None
        top = Path(top_text).resolve() if top_text else rootdir.resolve()
        return Sides(top, rootdir.resolve(), "", head or "", head or "", python)
    top_text = git(rootdir, "rev-parse", "--show-toplevel")
    if top_text is None:
        raise DecodePerfError(f"--decodeperf-ab compares two commits, but {rootdir} is not inside a git checkout")
    top = Path(top_text).resolve()
    head = git(top, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head is None:
        raise DecodePerfError(f"--decodeperf-ab: {top} has no commit yet")
    ref = ref or default_ref(top)
    a_commit = git(top, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if a_commit is None:
        hint = "try a hash, a branch or HEAD~1"
        if (rootdir / ref).exists():
            hint = "it is a path; write --decodeperf-ab=REF, or put --decodeperf-ab after the test paths"
        raise DecodePerfError(f"--decodeperf-ab: REF {ref!r} is not a commit of {top} ({hint})")
    dirty = git(top, "status", "--porcelain", "--untracked-files=no")
    if dirty is not None:
        files = [line.split(maxsplit=1)[-1] for line in dirty.splitlines()]
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise DecodePerfError(
            f"--decodeperf-ab measures commits, and the checkout has uncommitted changes ({shown}): "
            "commit or stash them first"
        )
    return Sides(top, rootdir.resolve(), ref, a_commit, head, python)


def check_files_at_ref(sides: Sides, tree: Path, files: Iterable[Path]) -> None:
    """Every collected test file must exist in REF's tree too: say which does not, in one line."""
    missing = sorted(
        str(path.resolve().relative_to(sides.top))
        for path in set(files)
        if not (tree / path.resolve().relative_to(sides.top)).exists()
    )
    if missing:
        raise DecodePerfError(
            f"--decodeperf-ab: {', '.join(missing)} does not exist at REF {sides.ref} ({sides.a_commit[:8]}): "
            "pick a REF that has the test, or run the A/B on tests both commits have"
        )


def check_options_at_ref(sides: Sides, tree: Path, args: Iterable[str]) -> None:
    """A REF that is this plugin's own source and predates a ``--decodeperf-X`` flag the workers are given
    would die refusing it: say so in one line instead (a REF of another project uses the installed plugin)."""
    options = tree / "pytest_decodeperf" / "options.py"
    if not options.is_file():
        return
    text = options.read_text(encoding="utf-8")
    for arg in args:
        if arg.startswith("--decodeperf-"):
            name = arg.removeprefix("--decodeperf-").split("=", 1)[0]
            if f'"{name}"' not in text:
                raise DecodePerfError(
                    f"--decodeperf-ab: REF {sides.ref} ({sides.a_commit[:8]}) predates --decodeperf-{name}: its side "
                    "could not expand the same variants; pick a later REF, or run without that option"
                )


@contextlib.contextmanager
def worktree(sides: Sides) -> Iterator[Path]:
    """REF checked out (detached) in a temporary worktree; removed, with git's record of it, on exit."""
    with worktree_at(sides.top, sides.a_commit, f"--decodeperf-ab: could not check out {sides.ref}") as path:
        yield path


@contextlib.contextmanager
def worktree_at(top: Path, commit: str, failure: str) -> Iterator[Path]:
    """``commit`` checked out (detached) in a temporary worktree of the repository at ``top``; removed, with
    git's record of it, on exit whatever happened; ``failure`` starts the one line said when git cannot."""
    parent = Path(tempfile.mkdtemp(prefix="decodeperf-ab-"))
    path = parent / "ref"
    made = subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(path), commit],
        cwd=top,
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        shutil.rmtree(parent, ignore_errors=True)
        reason = (made.stderr.strip().splitlines() or ["git failed"])[-1]
        raise DecodePerfError(f"{failure} in a worktree: {reason}")
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=top, capture_output=True, check=False)
        shutil.rmtree(parent, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=top, capture_output=True, check=False)

"""Live validity of ``decodeperf bisect`` as users run it: how often it names the right commit, and how long.

The same temporary user project as ``ab_validity.py`` (the plugin ``pip install``ed into a fresh venv,
or ``--python``; one test file of two variants), grown to ``--commits`` commits after the first: each
an empty change except one, chosen at random per run, whose ``decode_model`` busy-waits the given
fraction of the step a plain run measured. Each run is ``decodeperf bisect --speed FIRST HEAD perf``
from the project's checkout; a run is *right* when it names the slowed commit, *undecided* when it
stops at a step it cannot decide (exit 1), *wrong* otherwise. Also an A/A bisection (no commit
slowed): it must say there is nothing to bisect. A benchmark, never a CI test; prints one markdown
row per condition, and the whole table at the end:

    python scripts/bisect_validity.py --models tiny-gpt2 --commits 8 --runs 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from live_project import arguments, benchmark, git, make_project, run, set_extra, step_ms

HEADER = [
    "| model | slowed commit | runs | right | undecided | wrong | median A/Bs | median bisection |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
]


def bisect_once(python: Path, project: Path, first: str, options: list[str]) -> tuple[int, dict[str, Any], float]:
    out = project.parent / "bisect.json"
    out.unlink(missing_ok=True)
    cmd = [str(python), "-m", "pytest_decodeperf", "bisect", "--speed", first, "HEAD", "perf", *options]
    start = time.monotonic()
    proc = run([*cmd, "--json", str(out)], project)
    seconds = time.monotonic() - start
    if proc.returncode == 2 or not out.exists():
        raise SystemExit(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    print("\n".join(f"    {line}" for line in proc.stdout.splitlines() if not line.startswith("    A/B")), flush=True)
    return proc.returncode, json.loads(out.read_text()), seconds


def history(project: Path, first: str, commits: int, slowed: int | None, extra_s: float) -> str | None:
    """``commits`` commits after ``first``; the ``slowed``-th (1-based) busy-waits: its hash (None: none)."""
    git(project, "reset", "-q", "--hard", first)
    culprit = None
    for i in range(1, commits + 1):
        if i == slowed:
            set_extra(project, extra_s, f"commit {i}: slower")
            culprit = git(project, "rev-parse", "HEAD")
        else:
            git(project, "commit", "-q", "--allow-empty", "-m", f"commit {i}")
    return culprit


def run_model(python: Path, model: str, args: argparse.Namespace, options: list[str], work: Path) -> list[str]:
    project = make_project(work / Path(model).name, model, args.new_tokens)
    first = git(project, "rev-parse", "HEAD")
    step = step_ms(python, project, options)
    print(f"# {model}: baseline step {step:.3f} ms (plain run)", flush=True)
    rng = random.Random(args.seed)
    rows = []
    for slowdown in [0.0, *args.slowdowns]:
        tally = {"right": 0, "undecided": 0, "wrong": 0}
        steps, seconds = [], []
        for n in range(args.runs if slowdown else args.aa_runs):
            slowed = rng.randint(1, args.commits) if slowdown else None
            culprit = history(project, first, args.commits, slowed, slowdown * step / 1e3)
            code, result, took = bisect_once(python, project, first, options)
            found = result["culprit"]
            verdict = "undecided" if code == 1 else "right" if found == culprit else "wrong"
            tally[verdict] += 1
            steps.append(len(result["steps"]))
            seconds.append(took)
            print(f"  +{slowdown:.0%} #{n + 1}: commit {slowed}: {verdict} ({len(result['steps'])} A/Bs, {took:.0f} s)")
        runs = sum(tally.values())
        share = {k: f"{v}/{runs}" for k, v in tally.items()}
        label = f"+{slowdown:.0%} per step, 1 of {args.commits}" if slowdown else f"none of {args.commits} (A/A)"
        rows.append(
            f"| {model} | {label} | {runs} | {share['right']} | {share['undecided']} | {share['wrong']} | "
            f"{statistics.median(steps) if steps else '-'} | {statistics.median(seconds) if seconds else 0:.0f} s |"
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, models="tiny-gpt2", slowdowns="0.10")
    parser.add_argument("--commits", type=int, default=8, help="commits after the first (BAD is the last)")
    parser.add_argument("--runs", type=int, default=5, help="bisections per model and slowdown")
    parser.add_argument("--aa-runs", type=int, default=2, help="bisections with no commit slowed")
    parser.add_argument("--seed", type=int, default=0, help="which commit is slowed, per run")
    return benchmark("bisect_validity.py", argv, parser, run_model, HEADER)


if __name__ == "__main__":
    raise SystemExit(main())

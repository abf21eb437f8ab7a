"""Live validity of the history gate (``--decodeperf-asv --decodeperf-compare``) as users run it: separate runs.

The same temporary user project as ``ab_validity.py`` (the plugin pip-installed in a fresh venv, one
test file of two variants, a ``decode_model`` that busy-waits per forward), with asv history in
``.asv/results``. Every decision is what a nightly does: one pytest session records a commit, a later
separate session of the next commit records itself and compares with it (``--decodeperf-asv
--decodeperf-compare``), failing on a regression. Conditions:

* A/A: every commit is the same code (empty commits), each run compared with the one before;
* A/A under drift: one of the two runs has the machine busy (two CPU-bound processes beside it), so
  the machine's speed moves between the runs, as it does on a shared VM;
* +X%: a good commit recorded, then a commit whose forwards busy-wait X% of the measured step;
* x2.8 against a loaded reference: the good commit recorded on a busy machine, the 2.8x-slower one on a
  quiet one (the canary then says the machine got faster: the case that used to pass).

Per condition: sessions failed, and each variant's ms/token row mark (``+`` worse, ``?`` no verdict,
``~``/`` `` unchanged, ``-`` better). A benchmark (minutes per condition), never a CI test:

    python scripts/history_validity.py --models tiny-gpt2 --aa-runs 40 --runs 10
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from live_project import ROOT, arguments, benchmark, git, make_project, run, set_extra, step_ms

ROW = re.compile(r"^([+\-~? ])\s+\S+\s+\S+\s+~?\d+\.\d+\s+\S*time_decode_per_token\(")


@contextmanager
def busy(on: bool) -> Iterator[None]:
    """Two CPU-bound processes beside the run (the machine's speed moves), or nothing."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 if on else 0)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@dataclass
class Condition:
    label: str
    sessions: int = 0
    failed: int = 0
    marks: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)

    def row(self, model: str) -> str:
        n = sum(self.marks.values()) or 1
        share = {m: f"{self.marks[m] / n:.0%}" for m in "+?-"}
        same = f"{(self.marks[' '] + self.marks['~']) / n:.0%}"
        median = sorted(self.seconds)[len(self.seconds) // 2] if self.seconds else float("nan")
        return (
            f"| {model} | {self.label} | {self.sessions} | {self.failed} ({self.failed / max(self.sessions, 1):.0%}) "
            f"| {share['+']} | {share['?']} | {same} | {share['-']} | {median:.0f} s |"
        )


HEADER = [
    "| model | condition | compared runs | sessions failed | ms/token worse (+) | no verdict (?) | unchanged | "
    "better | median session |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def record(python: Path, project: Path, options: list[str], cond: Condition | None, loaded: bool = False) -> None:
    """One separate pytest session of the checked-out commit: recorded, and compared when ``cond`` is given."""
    cmd = [str(python), "-m", "pytest", "perf", "--decodeperf", "--decodeperf-asv", "-p", "no:cacheprovider"]
    cmd += [*options, *(["--decodeperf-compare"] if cond is not None else [])]
    start = time.monotonic()
    with busy(loaded):
        proc = run(cmd, project)
    if cond is None:
        if proc.returncode != 0:
            raise SystemExit(f"a recording run failed:\n{proc.stdout[-3000:]}")
        return
    cond.seconds.append(time.monotonic() - start)
    cond.sessions += 1
    cond.failed += proc.returncode != 0
    marks = [m.group(1) for line in proc.stdout.splitlines() if (m := ROW.match(line))]
    if not marks:
        raise SystemExit(f"no comparison in the output (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    cond.marks.update(marks)
    print(f"  {cond.label} #{cond.sessions}: exit {proc.returncode}, ms/token marks {marks}", flush=True)


def run_model(python: Path, model: str, args: argparse.Namespace, options: list[str], work: Path) -> list[str]:
    project = make_project(work / model, model, args.new_tokens)
    (project / "asv.conf.json").write_text((ROOT / "asv.conf.json").read_text())
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "asv history")
    step = step_ms(python, project, options)
    print(f"# {model}: baseline step {step:.3f} ms (plain run)", flush=True)
    rows = []

    aa = Condition("A/A, separate runs")
    record(python, project, options, None)
    for i in range(args.aa_runs):
        git(project, "commit", "-q", "--allow-empty", "-m", f"unchanged {i}")
        record(python, project, options, aa)
    rows.append(aa.row(model))
    print(rows[-1], flush=True)

    drift = Condition("A/A, one run of each pair on a busy machine")
    for i in range(args.runs):
        git(project, "commit", "-q", "--allow-empty", "-m", f"unchanged again {i}")
        record(python, project, options, None, loaded=i % 2 == 0)
        git(project, "commit", "-q", "--allow-empty", "-m", f"unchanged, compared {i}")
        record(python, project, options, drift, loaded=i % 2 == 1)
    rows.append(drift.row(model))
    print(rows[-1], flush=True)

    for slowdown, loaded_ref in [*((s, False) for s in args.slowdowns), (1.8, True)]:
        label = f"+{slowdown:.0%} per step" if not loaded_ref else "x2.8, the reference run on a busy machine"
        cond = Condition(label)
        for i in range(args.runs):
            set_extra(project, 0.0, f"good {label} {i}")
            record(python, project, options, None, loaded=loaded_ref)
            set_extra(project, slowdown * step / 1e3, f"slower {label} {i}")
            record(python, project, options, cond)
        rows.append(cond.row(model))
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, models="tiny-gpt2", slowdowns="0.05,0.10,1.8")
    parser.add_argument("--aa-runs", type=int, default=40, help="separate-run A/A comparisons per model")
    parser.add_argument("--runs", type=int, default=10, help="comparisons per model and other condition")
    return benchmark("history_validity.py", argv, parser, run_model, HEADER, own_home=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""Live validity of ``--decodeperf-ab`` as users run it: real pytest sessions in a temporary user project.

The plugin is installed into a fresh virtual environment the way a user installs it (``pip install
<this checkout>``, not editable; ``--python`` reuses an interpreter that has it). A temporary git
project holds one test file (two variants: dynamic cache, baseline and pipelined, batch 2, 32 new
tokens, no stop) and a ``decode_model`` fixture that adds a busy-wait to every forward, 0 s at its
first commit. Per model and condition, ``pytest perf --decodeperf --decodeperf-ab=REF`` runs as a
separate session (new controller, new worktree, new workers) and its ``--decodeperf-json`` verdicts are
tallied:

* A/A: REF is HEAD itself, nothing differs;
* +X%: a second commit busy-waits X% of the step time measured first (a plain ``--decodeperf`` run of
  the first commit, the baseline variant's ms/token), and REF is the first commit.

Each variant's ms/token verdict is one decision; prefill's is tallied apart. A session fails when
pytest exits non-zero. This times real generations for minutes to hours: a benchmark, never a CI
test (CI runs it once with tiny settings to see it work, no rate asserted). Prints one markdown table
row per model and condition, and the whole table at the end, for docs/explanation/validity.md:

    python scripts/ab_validity.py --models tiny-gpt2,tiny-llama-gqa --aa-sessions 25 --sessions 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from live_project import arguments, benchmark, git, make_project, run, set_extra, step_ms


@dataclass
class Condition:
    label: str
    sessions: int = 0
    failed: int = 0
    ms: list[str] = field(default_factory=list)  # ms/token decision per variant
    prefill: list[str] = field(default_factory=list)  # prefill decision, or "not judged"
    ratios: list[float] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)  # round pairs per process pair (they stop once pinned)
    seconds: list[float] = field(default_factory=list)

    def share(self, values: list[str], *words: str) -> str:
        return f"{sum(v in words for v in values) / len(values):.0%}" if values else "-"

    def row(self, model: str) -> str:
        ratio = f"x{statistics.median(self.ratios):.3f}" if self.ratios else "-"
        procs = f"{statistics.median(self.processes):.0f}" if self.processes else "-"
        rounds = f"{statistics.median(self.rounds):.1f}" if self.rounds else "-"
        return (
            f"| {model} | {self.label} | {len(self.ms)} | {self.share(self.ms, 'different_worse')} | "
            f"{self.share(self.ms, 'different_worse', 'different_better')} | {self.share(self.ms, 'same')} | "
            f"{self.share(self.ms, 'unknown')} | {self.share(self.prefill, 'same')} / "
            f"{self.share(self.prefill, 'not judged')} | {self.failed}/{self.sessions} | {ratio} | {procs} | "
            f"{rounds} | {f'{statistics.median(self.seconds):.0f} s' if self.seconds else '-'} |"
        )


HEADER = [
    "| model | B | decisions | ms/token WORSE | DIFFERENT | SAME | UNKNOWN | prefill SAME / not judged | "
    "sessions failed | median B/A | median process pairs | median round pairs per process pair | median session |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def session(python: Path, project: Path, ref: str, options: list[str], cond: Condition) -> None:
    out = project / "ab.json"
    out.unlink(missing_ok=True)
    cmd = [str(python), "-m", "pytest", "perf", "--decodeperf", f"--decodeperf-ab={ref}", f"--decodeperf-json={out}"]
    cmd += ["-p", "no:cacheprovider", *options]
    start = time.monotonic()
    proc = run(cmd, project)
    cond.seconds.append(time.monotonic() - start)
    cond.sessions += 1
    cond.failed += proc.returncode != 0
    if not out.exists():
        raise SystemExit(f"no verdicts from `{' '.join(cmd)}` (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    for record in json.loads(out.read_text())["ab"]:
        if record["error"]:
            raise SystemExit(f"{record['test']}: no verdict: {record['error']}")
        ms, pre = record["metrics"].get("ms_per_token"), record["metrics"].get("prefill_ms")
        if ms is not None:
            cond.ms.append(ms["decision"])
            cond.processes.append(ms["processes"])
            cond.rounds.append(ms["pairs"] / max(ms["processes"], 1))
            if ms["ratio"] is not None:
                cond.ratios.append(ms["ratio"])
        if pre is not None:
            cond.prefill.append(pre["decision"] if pre["judged"] else "not judged")
        said = (
            "-"
            if ms is None
            else f"{ms['decision']} x{ms['ratio'] or float('nan'):.3f} ({ms['processes']} process pairs)"
        )
        print(f"  {cond.label} #{cond.sessions}: {record['test'].split('[')[-1][:-1]}: ms/token {said}", flush=True)


def run_model(python: Path, model: str, args: argparse.Namespace, options: list[str], work: Path) -> list[str]:
    project = make_project(work / Path(model).name, model, args.new_tokens)  # a model may be a checkpoint's path
    first = git(project, "rev-parse", "HEAD")
    step = step_ms(python, project, options)
    print(f"# {model}: baseline step {step:.3f} ms (plain run)", flush=True)
    rows = []
    for slowdown in [0.0, *args.slowdowns]:
        git(project, "reset", "-q", "--hard", first)
        ref = "HEAD"
        if slowdown:
            set_extra(project, slowdown * step / 1e3, f"+{slowdown:.0%} per forward")
            ref = first
        cond = Condition("A/A" if not slowdown else f"+{slowdown:.0%} per step")
        count = args.aa_sessions if not slowdown else args.sessions
        if not count:
            continue  # a condition given no sessions (--aa-sessions 0): no row
        for _ in range(count):
            session(python, project, ref, options, cond)
        rows.append(cond.row(model))
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, models="tiny-gpt2,tiny-llama-gqa", slowdowns="0.02,0.05,0.10")
    parser.add_argument("--aa-sessions", type=int, default=25, help="A/A sessions per model (2 decisions each)")
    parser.add_argument("--sessions", type=int, default=10, help="sessions per model and injected slowdown")
    return benchmark("ab_validity.py", argv, parser, run_model, HEADER)


if __name__ == "__main__":
    raise SystemExit(main())

"""The in-process figures of docs/explanation/validity.md, measured on this machine.

    python scripts/validity_figures.py [--quick]

Prints, with the helpers of scripts/validity_lib.py:
(1) the regression gate's false alarms over ten A/A comparisons, both sides' rounds interleaved;
(2) the same gate over eleven runs measured one after another (what a nightly sees: the
    machine's drift between runs included), with the largest run-to-run ratio;
(3) the gate's verdict on a 10% per-step slowdown;
(4) injected vs measured (harness and independent stopwatch) per-step slowdowns.
``--quick`` runs each part small (a smoke test; its figures are not the page's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import validity_lib as gv
from validity_lib import slowdown

from pytest_decodeperf import Runner, build_model
from pytest_decodeperf.engine.device.machine import machine_info
from pytest_decodeperf.history.compare import compare_with_history
from pytest_decodeperf.history.storage import write_history


def sequential_a_a(model: torch.nn.Module, results: Path, runs: int, rounds: int) -> tuple[list[str], float]:
    """Runs one after another, each gated against the one before: (false alarms, largest ratio)."""
    runner = Runner("cpu", rounds=rounds, warmup=1, profile_gpu=False)
    alarms: list[str] = []
    worst = 1.0
    for i in range(runs):
        recs = [runner.run(v, model).record(f"tests/test_gate.py::test_decode[{v.id}]") for v in gv.VARIANTS]
        if i:
            cmp = compare_with_history(
                recs, results, machine="seq", current_commit=gv.commit(i), fail_pct=gv.FAIL_PCT, repo_dir=None
            )
            alarms += [f"run {i}: {r.label.split('.')[-1]} x{r.ratio:.2f}" for r in cmp.regressions]
            worst = max([worst, *(max(r.ratio, 1 / r.ratio) for r in cmp.rows if r.ratio)])
        write_history(recs, machine_info("cpu"), results, gv.commit(i), name="seq", date_ms=1_700_000_000_000 + i)
    return alarms, worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small runs: a smoke test, not the figures")
    args = parser.parse_args()
    runs = 2 if args.quick else 10
    if args.quick:
        gv.ROUNDS = 3
    torch.set_num_threads(1)
    model = build_model("tiny-gpt2")
    with tempfile.TemporaryDirectory() as tmp:
        tempfile.tempdir = tmp  # history lock files
        alarms = gv.a_a_false_alarms(model, Path(tmp) / "aa", runs)
        print(
            f"(1) A/A interleaved: {len(alarms)} false alarm(s) in {runs} comparisons x 2 variants x 3 metrics "
            f"(gate: >{gv.FAIL_PCT:g}% and significant, {gv.ROUNDS} rounds) {alarms}"
        )
        seq, worst = sequential_a_a(model, Path(tmp) / "seq", runs + 1, gv.ROUNDS)
        print(
            f"(2) A/A one run after another: {len(seq)} false alarm(s) in {runs} comparisons; "
            f"largest run-to-run ratio x{worst:.2f} {seq}"
        )
        cmp = gv.slowdown_comparison(model, Path(tmp) / "slow")
        rows = [r for r in cmp.rows if "per_token" in r.benchmark]
        print("(3) 10% slowdown: " + "; ".join(f"{r.params['stream']} x{r.ratio:.3f} mark {r.mark!r}" for r in rows))
    for injected in (0.10, 0.25):
        print(f"(4) {slowdown(model, injected, rounds=5 if args.quick else 31)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

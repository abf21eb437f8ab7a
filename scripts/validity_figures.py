"""The figures of README's "How we know the numbers are right", measured on this machine.

    python scripts/validity_figures.py

Prints (1) false alarms of the regression gate over ten A/A runs and (2) injected vs measured
per-step slowdowns, using the same helpers as tests/test_gate_validity.py and tests/test_validity.py.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_gate_validity import a_a_false_alarms, slowdown_comparison
from test_validity import alternate

from pytest_decodeperf import Runner, build_model
from pytest_decodeperf.variants import Variant


def main() -> int:
    torch.set_num_threads(1)
    model = build_model("tiny-gpt2")
    with tempfile.TemporaryDirectory() as tmp:
        alarms = a_a_false_alarms(model, Path(tmp) / "aa")
        print(f"A/A: {len(alarms)} false alarm(s) in 10 runs x 6 metrics (gate: >5% and significant) {alarms}")
        cmp = slowdown_comparison(model, Path(tmp) / "slow")
        rows = [r for r in cmp.rows if "per_token" in r.benchmark]
        print("10% slowdown: " + "; ".join(f"{r.params['stream']} x{r.ratio:.3f} mark {r.mark!r}" for r in rows))
    variant = Variant("tiny-gpt2", "dynamic", "baseline", 1, 32, stop="none")
    base = Runner("cpu", rounds=7, warmup=2, profile_gpu=False).run(variant, model).measurement.ms_per_token
    for injected in (0.10, 0.25):
        delay = injected * base / 1e3
        pairs = list(alternate(model, delay))
        expected = statistics.median(delay * 1e3 / p for p, _ in pairs)
        measured = statistics.median(s / p - 1 for p, s in pairs)
        print(f"injected {expected:.1%} per step, measured {measured:.1%} ({100 * (measured - expected):+.1f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

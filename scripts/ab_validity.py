"""Live validity of the same-session A/B gate on this machine: false alarms, detection, decision time.

For each model, ``--decisions`` A/B decisions per condition: A/A (no change) and injected slowdowns
(a forward hook that busy-waits a fixed fraction of the measured plain step time, the way a
``decode_model`` override would add work). Each decision is what ``--decodeperf-ab`` does for one
variant: both sides warmed, then single timed rounds in ABBA order, blocks of 10 pairs, the
sequential gate (``pytest_decodeperf.ab``) on ms/token and prefill, at most 200 pairs; a decision
fails only on a significant slowdown beyond the gate. Both sides run in this one process (the A/B
workers add a pipe message per round, not timing), on the same model object, hook on or off.

This times real generations: a benchmark, never a CI test. Prints a markdown table for the README.

    python scripts/ab_validity.py --aa-decisions 100 --decisions 40 --models tiny-gpt2,tiny-llama-gqa
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.ab import Decision, SequentialAB
from pytest_decodeperf.engine.paired import PairedRounds

GATE = 0.05
BLOCK = 10  # pairs between two looks of the in-process gate


class Injected:
    """Busy-wait ``seconds`` after every forward while ``on`` (a slowdown that only B sees)."""

    def __init__(self, model: torch.nn.Module):
        self.seconds = 0.0
        self.on = False
        model.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        if self.on and self.seconds:
            end = time.perf_counter() + self.seconds
            while time.perf_counter() < end:
                pass


@dataclass
class Tally:
    decisions: list[dict[str, Decision]] = field(default_factory=list)
    pairs: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    def rate(self, metric: str, decision: Decision) -> float:
        return sum(d.get(metric) is decision for d in self.decisions) / len(self.decisions)

    def failed(self) -> float:
        return sum(any(v is Decision.DIFFERENT_WORSE for v in d.values()) for d in self.decisions) / len(self.decisions)


def decide(a: PairedRounds, b: PairedRounds, hook: Injected, max_pairs: int) -> tuple[dict[str, Any], int, float]:
    """One A/B decision: ABBA rounds in blocks until every metric is decided or the budget is spent."""
    gates: dict[str, SequentialAB] = {}
    pairs = 0
    start = time.perf_counter()

    def timed(side: str) -> dict[str, float]:
        hook.on = side == "B"
        try:
            return (a if side == "A" else b).round()
        finally:
            hook.on = False

    while pairs < max_pairs:
        block: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for i in range(BLOCK):
            for side in ("A", "B") if (pairs + i) % 2 == 0 else ("B", "A"):
                block[side].append(timed(side))
        pairs += BLOCK
        for name in block["A"][0]:
            gate = gates.setdefault(name, SequentialAB(GATE, max_pairs=max_pairs))
            if not gate.done:
                gate.add([r[name] for r in block["A"]], [r[name] for r in block["B"]])
        if any(g.verdict().failed for g in gates.values()) or all(g.done for g in gates.values()):
            break  # as the controller: a metric proven worse fails the item, nothing more to sample
    verdicts = {name: gate.verdict() for name, gate in gates.items()}
    return verdicts, pairs, time.perf_counter() - start


def run_model(
    name: str, decisions: int, aa_decisions: int, slowdowns: list[float], max_pairs: int, new_tokens: int
) -> list[str]:
    runner = Runner("cpu", rounds=5, warmup=1, profile_gpu=False, threads=1)
    variant = Variant(name, "dynamic", "baseline", 1, new_tokens, stop="none")
    model = runner.model(name)
    hook = Injected(model)
    start = time.perf_counter()
    plain = runner.run(variant, model)  # what the plugin does for one variant, once
    once_s = time.perf_counter() - start
    step_s = plain.measurement.ms_per_token / 1e3
    a, b = PairedRounds(runner, model, variant), PairedRounds(runner, model, variant)
    a.warm()
    hook.on = True
    b.warm()
    hook.on = False
    rows = []
    for slowdown in [0.0, *slowdowns]:
        hook.seconds = slowdown * step_s
        tally = Tally()
        n = aa_decisions if slowdown == 0 else decisions
        for i in range(n):
            verdicts, pairs, seconds = decide(a, b, hook, max_pairs)
            tally.decisions.append({k: v.decision for k, v in verdicts.items()})
            tally.pairs.append(pairs)
            tally.seconds.append(seconds)
            tally.ratios.append(verdicts["ms_per_token"].ratio)
            print(f"  {name} +{slowdown:.0%} #{i + 1}: {verdicts['ms_per_token'].message()}", flush=True)
        worse = tally.rate("ms_per_token", Decision.DIFFERENT_WORSE)
        same = tally.rate("ms_per_token", Decision.SAME)
        unknown = tally.rate("ms_per_token", Decision.UNKNOWN)
        label = "A/A" if slowdown == 0 else f"+{slowdown:.0%} per forward"
        decision_s = statistics.median(tally.seconds)
        rows.append(
            f"| {name} | {label} | {n} | {worse:.0%} | {same:.0%} | {unknown:.0%} | {tally.failed():.0%} | "
            f"x{statistics.median(tally.ratios):.3f} | {statistics.median(tally.pairs):.0f} | "
            f"{decision_s:.1f} s ({decision_s / once_s:.1f}x) |"
        )
        print(rows[-1], flush=True)
    print(f"  {name}: one plain measurement (warmup 1 + 5 rounds + parity + syncs) took {once_s:.1f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=100, help="per injected slowdown")
    parser.add_argument("--aa-decisions", type=int, default=100, help="A/A decisions (no change)")
    parser.add_argument("--models", default="tiny-gpt2,tiny-llama-gqa")
    parser.add_argument("--slowdowns", default="0.02,0.05,0.10", help="injected work per forward, fractions")
    parser.add_argument("--max-pairs", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    header = [
        "| model | B | decisions | ms/token WORSE | SAME | UNKNOWN | session fails (any metric) | median B/A | "
        "median pairs | median decision time (x one measurement) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows: list[str] = []
    run: Callable[[str], list[str]] = lambda m: run_model(  # noqa: E731
        m,
        args.decisions,
        args.aa_decisions,
        [float(s) for s in args.slowdowns.split(",") if s],
        args.max_pairs,
        args.new_tokens,
    )
    for name in [m for m in args.models.split(",") if m]:
        rows += run(name)
    print("\n".join([*header, *rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

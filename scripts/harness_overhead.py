"""Harness overhead: the same variant timed bare (the engine loop alone) and through the plugin.

The two are run alternately in one process, so machine noise hits both alike; the figure is the
ratio of median tokens/s, plugin over bare (target: >= 0.98). Usage::

    python scripts/harness_overhead.py [--pairs 7] [--cache dynamic] [--stream pipelined] [--batch 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pytest_decodeperf import build_model, generate, make_workload
from pytest_decodeperf.engine.decode.caches import CacheSlot, get_cache
from pytest_decodeperf.engine.decode.stream_modes import get_stop_policy


def bare_tokens_per_s(cache: str, stream: str, batch: int, new_tokens: int, rounds: int, warmup: int) -> float:
    """The loop alone: perf_counter around generate(), nothing else."""
    model = build_model("tiny-gpt2")
    w = make_workload(model, batch, new_tokens)
    slot = CacheSlot(get_cache(cache), model, batch, w.prompts.shape[1] + new_tokens)
    policy = get_stop_policy(stream)
    rates = []
    with torch.inference_mode():
        for i in range(warmup + rounds):
            t0 = time.perf_counter()
            out = generate(model, replace(w, max_new_tokens=new_tokens), slot, policy)
            dt = time.perf_counter() - t0
            if i >= warmup:
                rates.append(batch * out.new_tokens / dt)
    return float(statistics.median(rates))


def plugin_tokens_per_s(
    workdir: Path, cache: str, stream: str, batch: int, new_tokens: int, rounds: int, warmup: int
) -> float:
    test = workdir / "test_overhead.py"
    test.write_text(
        textwrap.dedent(f"""
        import pytest

        @pytest.mark.decode_perf(cache={cache!r}, stream={stream!r}, batch_size={batch}, new_tokens={new_tokens})
        def test_variant():
            pass
    """)
    )
    out = workdir / "result.json"
    with contextlib.redirect_stdout(io.StringIO()) as log:
        code = pytest.main(
            [
                str(test),
                "--decodeperf",
                f"--decodeperf-rounds={rounds}",
                f"--decodeperf-warmup={warmup}",
                f"--decodeperf-json={out}",
                "--benchmark-disable",
                "-q",
                "-p",
                "no:cacheprovider",
                "--no-header",
                "--rootdir",
                str(workdir),
            ]
        )
    if code != 0:
        raise SystemExit(f"plugin run failed with exit code {code}:\n{log.getvalue()}")
    (record,) = json.loads(out.read_text())["results"]
    return float(record["tokens_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--cache", default="dynamic")
    parser.add_argument("--stream", default="pipelined")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared VM)")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bare, plugin = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.pairs):
            bare.append(
                bare_tokens_per_s(args.cache, args.stream, args.batch, args.new_tokens, args.rounds, args.warmup)
            )
            plugin.append(
                plugin_tokens_per_s(
                    Path(tmp), args.cache, args.stream, args.batch, args.new_tokens, args.rounds, args.warmup
                )
            )
    ratios = [p / b for p, b in zip(plugin, bare, strict=True)]
    print(
        f"variant: tiny-gpt2-{args.cache}-{args.stream}-b{args.batch}, {args.new_tokens} new tokens, "
        f"{args.pairs} alternating pairs x {args.rounds} rounds"
    )
    print(f"bare loop   tok/s median {statistics.median(bare):9.1f}  (min {min(bare):.1f}, max {max(bare):.1f})")
    print(f"plugin      tok/s median {statistics.median(plugin):9.1f}  (min {min(plugin):.1f}, max {max(plugin):.1f})")
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"plugin/bare ratio median {statistics.median(ratios):.3f}  (IQR {q[0]:.3f}..{q[2]:.3f}; target >= 0.98)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

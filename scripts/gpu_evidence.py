"""Reproduce the article's tables on this machine and write a dated results page.

    python scripts/gpu_evidence.py --out docs/results            # on a GPU: GPT-2 small, batch 32, 100 tokens

Tables: (a) batch 32: naive, dynamic, expandable segments, static, compile, pipelined,
compile + pipelined; (b) pipelining gain vs batch size; (c) pipelined vs nostop (the streams' own
cost); (d) syncs per token and GPU idle fraction per variant (CUDA only). Like the article, the
runs decode to the full length (stop="none"); parity with real stops is tested in tests/test_cuda.py.
Expandable segments need PYTORCH_ALLOC_CONF before CUDA initializes, so that variant runs in a
subprocess. Every number on the page is measured by this script; the command is written on it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.device.machine import machine_info, resolve_device
from pytest_decodeperf.engine.spec.models import default_model_name
from pytest_decodeperf.records import ResultRecord


def command_line() -> str:
    """How this script was run, with its path relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parents[1]
    shown = script.relative_to(root) if script.is_relative_to(root) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def _row(label: str, rec: ResultRecord, base: ResultRecord | None) -> str:
    speed = f"{rec['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
    mem = (
        f"{rec['peak_allocated_bytes'] / 1e9:.3f} / {rec['peak_reserved_bytes'] / 1e9:.3f}"
        if rec["peak_allocated_bytes"] and rec["peak_reserved_bytes"]
        else "-"
    )
    frag = (
        f"{100 * (1 - rec['peak_allocated_bytes'] / rec['peak_reserved_bytes']):.1f}%"
        if rec["peak_allocated_bytes"] and rec["peak_reserved_bytes"]
        else "-"
    )
    ms = sorted(1e3 * s for s in rec["samples_s"])
    return (
        f"| {label} | {rec['tokens_per_s']:,.0f} | {rec['spread_pct']:.1f}% | {ms[len(ms) // 2]:.1f} "
        f"({ms[0]:.1f}..{ms[-1]:.1f}) | {rec['ms_per_token']:.3f} | {speed} | {mem} | {frag} | {rec['parity']} |"
    )


HEADER = (
    "| variant | tok/s (median) | spread (IQR) | round ms median (min..max) | ms/token | vs naive/baseline "
    "| peak alloc / reserved GB | fragmentation | parity |\n|---|---|---|---|---|---|---|---|---|"
)


def expandable_segments(args: argparse.Namespace, device: str, model: str) -> ResultRecord:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "es.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest_decodeperf",
            "run",
            "--device",
            device,
            "--models",
            model,
            "--caches",
            "dynamic",
            "--streams",
            "baseline",
            "--batch-sizes",
            str(args.batch),
            "--new-tokens",
            str(args.new_tokens),
            "--stop",
            "none",
            "--rounds",
            str(args.rounds),
            "--warmup",
            str(args.warmup),
            "--json",
            str(out),
        ]
        env = {
            **os.environ,
            "PYTORCH_ALLOC_CONF": "expandable_segments:True",
            "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        }
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        (rec,) = json.loads(out.read_text())["results"]
        return rec  # type: ignore[no-any-return]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--batches", default="1,2,4,8,16,32,64")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile rows (smoke tests)")
    args = p.parse_args()
    device = resolve_device(args.device)
    model = args.model or default_model_name(device)
    runner = Runner(device, rounds=args.rounds, warmup=args.warmup)
    v = Variant(model, batch_size=args.batch, new_tokens=args.new_tokens, stop="none")

    def run(**kw: Any) -> ResultRecord:
        from dataclasses import replace

        return runner.run(replace(v, **kw)).record()

    table_a: list[tuple[str, ResultRecord]] = [
        ("naive (no cache)", run(cache="none", stream="baseline")),
        ("dynamic cache", run(cache="dynamic", stream="baseline")),
    ]
    if device.type == "cuda":
        table_a.append(("dynamic + expandable segments", expandable_segments(args, device.type, model)))
    table_a.append(("static cache", run(cache="static", stream="baseline")))
    if not args.skip_compile:
        table_a.append(("static + compile", run(cache="static", stream="baseline", compile=True)))
    table_a.append(("static + pipelined", run(cache="static", stream="pipelined")))
    if not args.skip_compile:
        table_a.append(("static + compile + pipelined", run(cache="static", stream="pipelined", compile=True)))
    batches = [int(b) for b in args.batches.split(",")]
    table_b = [
        (
            b,
            run(cache="static", stream="baseline", batch_size=b),
            run(cache="static", stream="pipelined", batch_size=b),
            run(cache="static", stream="nostop", batch_size=b),
        )
        for b in batches
    ]

    machine = machine_info(device)
    stamp = dt.date.today().isoformat()
    name = f"{stamp}-{(machine.get('gpu_name') or device.type).replace(' ', '-')}"
    args.out.mkdir(parents=True, exist_ok=True)
    naive = table_a[0][1]
    lines = [
        f"# Seed reproduction on {machine.get('gpu_name') or device.type}, {stamp}",
        "",
        f"Command: `{command_line()}`",
        "",
        "Machine: "
        + ", ".join(
            f"{k}={machine.get(k)}"
            for k in ("gpu_name", "gpu_driver", "cuda", "torch", "transformers", "cpu", "num_cpu")
        ),
        "",
        f"Model {model}, batch {args.batch}, {args.new_tokens} new tokens, {args.rounds} timed rounds after "
        f"{args.warmup} warmup (compile) rounds; no EOS stops (as in the article).",
        "",
        f"## (a) Optimizations at batch {args.batch}",
        "",
        HEADER,
    ]
    lines += [_row(label, rec, naive) for label, rec in table_a]
    lines += [
        "",
        "## (b) Pipelining gain vs batch size (static cache)",
        "",
        "| batch | baseline tok/s | pipelined tok/s | pipelined / baseline | nostop tok/s | pipelined / nostop |",
        "|---|---|---|---|---|---|",
    ]
    for b, base, piped, nostop in table_b:
        lines.append(
            f"| {b} | {base['tokens_per_s']:,.0f} | {piped['tokens_per_s']:,.0f} | "
            f"{piped['tokens_per_s'] / base['tokens_per_s']:.3f} | {nostop['tokens_per_s']:,.0f} | "
            f"{piped['tokens_per_s'] / nostop['tokens_per_s']:.3f} |"
        )
    lines += [
        "",
        "## (d) Syncs per token and GPU idle",
        "",
        "| variant | syncs / token | GPU idle fraction | idle us / step |",
        "|---|---|---|---|",
    ]
    for label, rec in table_a + [(f"b{b} {r['stream']}", r) for b, *rs in table_b for r in rs]:
        idle = rec.get("gpu_idle_fraction")
        lines.append(
            f"| {label} | {rec.get('syncs_per_token') if rec.get('syncs_per_token') is not None else '-'} | "
            f"{f'{100 * idle:.1f}%' if idle is not None else '- (cpu)'} | "
            f"{rec.get('gpu_idle_us_per_step') if rec.get('gpu_idle_us_per_step') is not None else '-'} |"
        )
    page = args.out / f"{name}.md"
    page.write_text("\n".join(lines) + "\n")
    records = [r for _, r in table_a] + [r for _, *rs in table_b for r in rs]
    (args.out / f"{name}.json").write_text(json.dumps({"machine": machine, "results": records}, indent=2))
    try:
        from pytest_decodeperf.plots import write_plots

        plot_dir = args.out / f"{name}-plots"
        plot_dir.mkdir(exist_ok=True)
        write_plots([r for _, *rs in table_b for r in rs], plot_dir)
    except Exception as exc:  # plots are a convenience; the page and JSON are the evidence
        print(f"plots skipped: {exc}", file=sys.stderr)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())

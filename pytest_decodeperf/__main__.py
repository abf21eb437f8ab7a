"""``python -m pytest_decodeperf``: run a variant matrix with the engine alone and print the table."""

from __future__ import annotations

import argparse
import itertools
import json
import sys

from .errors import DecodePerfError
from .machine import machine_info, resolve_device
from .models import default_model_name
from .report import render_table
from .runner import Runner
from .variants import Variant


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_decodeperf", description=__doc__)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--models", default="", help="comma list (default: the device's default model)")
    parser.add_argument("--caches", default="none,dynamic,static")
    parser.add_argument("--streams", default="baseline,deferred,pipelined,nostop")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--stop", default="eos", help="eos (rows stop at known steps) or none")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the records to this file")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        models = _csv(args.models) or [default_model_name(device)]
        batches = [int(b) for b in _csv(args.batch_sizes)]
        variants = [
            Variant(m, c, s, b, args.new_tokens, args.stop).validate(device)
            for m, c, b, s in itertools.product(models, _csv(args.caches), batches, _csv(args.streams))
        ]
        runner = Runner(device, rounds=args.rounds, warmup=args.warmup)
        records = []
        for variant in variants:
            result = runner.run(variant)
            records.append(result.record())
            if result.parity is not None and not result.parity.ok:
                print(result.parity, file=sys.stderr)
    except (DecodePerfError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_table(records, title=f"decode perf on {device.type}"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": machine_info(device), "results": records}, fh, indent=2)
    return 1 if any(r["parity"] == "fail" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``decodeperf`` command: the engine and the history without pytest.

``decodeperf run``      measure a variant matrix with the engine alone and print the table
``decodeperf publish``  restore this package's benchmark definitions, then ``asv publish``: the dashboard
``decodeperf restore``  only the first half of publish (after an ``asv run`` dropped our definitions)
``decodeperf compare``  ``asv compare A B`` on the history, exiting 1 when it shows a worsened benchmark
``decodeperf history-pull``  clone the results branch into the results directory (empty if none yet)
``decodeperf history-push``  commit and push this run's results, rebasing onto other machines' pushes
``decodeperf history-last``  the code commit of the newest results on the branch (what a nightly A/B is against)
``decodeperf bisect GOOD BAD [pytest args]``  the first commit between them that made decoding slower, or
                    broke parity: the same-session A/B (or a parity run) at each step, in worktrees

``python -m pytest_decodeperf ...`` is the same command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import DecodePerfError


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _run(args: argparse.Namespace) -> int:
    from .atomic import write_json_atomic
    from .engine.device.machine import machine_info, resolve_device
    from .engine.runner import Runner
    from .engine.spec.models import default_model_name
    from .engine.spec.variants import matrix
    from .engine.spec.workload import PROMPTS, default_prompt_lens
    from .errors import check_choice
    from .fingerprint import of
    from .marker import check_prompt_len, prompt_axis
    from .report import render_table

    try:
        for name in args.decoders:
            import_decoders(name)
        device = resolve_device(args.device)
        models = _csv(args.models) or [default_model_name(device)]
        batches = [int(b) for b in _csv(args.batch_sizes)]
        lens = tuple(check_prompt_len(n) for n in _csv(args.prompt_lens)) or default_prompt_lens(device)
        points = prompt_axis(lens, check_choice("prompts", args.prompts, PROMPTS), default_prompt_lens(device))
        axes = (_csv(args.caches), _csv(args.streams), batches, [args.new_tokens], [args.stop])
        attns: list[str | None] = [*_csv(args.attn)] or [None]
        variants = matrix(models, *axes, dtypes=[args.dtype], prompts=points, attns=attns)
        variants = [v.validate(device) for v in variants]
        if args.rounds < 1 or args.warmup < 0 or not 0 <= args.max_time <= 3600:
            raise DecodePerfError(
                f"--rounds must be >= 1, --warmup >= 0 and --max-time 0 to 3600 s; got {args.rounds}, "
                f"{args.warmup}, {args.max_time:g}"
            )
        runner = Runner(device, rounds=args.rounds, warmup=args.warmup, max_time_s=args.max_time)
        records = []
        environment = of(machine_info(device))
        for variant in variants:
            result = runner.run(variant)
            records.append(result.record())
            records[-1]["fingerprint"] = environment
            if result.parity is not None and not result.parity.ok:
                print(result.parity, file=sys.stderr)
            if result.syncs is not None and result.syncs.over_budget:
                print(result.syncs.message(variant.id), file=sys.stderr)
    except (DecodePerfError, ValueError) as exc:
        print(f"decodeperf: {exc}", file=sys.stderr)
        return 2
    print(render_table(records, title=f"decode perf on {device.type}"))
    if args.json:
        write_json_atomic(Path(args.json), {"machine": machine_info(device), "results": records})
    over = any((r["max_syncs_per_step"] or 0) > r["sync_budget"] for r in records if r["sync_budget"] is not None)
    return 1 if over or any(r["parity"] == "fail" for r in records) else 0


def import_decoders(name: str) -> None:
    """Import the module (a dotted name, or a ``.py`` file) whose ``@decoder`` functions register stream modes."""
    import importlib
    import importlib.util

    try:
        if name.endswith(".py") or "/" in name or "\\" in name:
            path = Path(name)
            if not path.is_file():
                raise DecodePerfError(f"--decoders {name!r}: no such file")
            spec = importlib.util.spec_from_file_location(f"_decodeperf_decoders_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise DecodePerfError(f"--decoders {name!r}: not a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(name)
    except DecodePerfError:
        raise
    except Exception as exc:  # the user's module failed to import: one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DecodePerfError(f"--decoders {name!r} did not import: {type(exc).__name__}: {first}") from None


def _restore(config: str) -> tuple[int, object]:
    from .history.config import read_asv_conf
    from .history.storage import restore_benchmarks

    try:
        conf = read_asv_conf(config)
        changed = restore_benchmarks(conf.results_dir) if conf.results_dir.is_dir() else []
    except DecodePerfError as exc:
        print(f"decodeperf: {exc}", file=sys.stderr)
        return 2, None
    print(f"decodeperf: restored {len(changed)} benchmark definition(s) in {conf.results_dir}", file=sys.stderr)
    return 0, conf


def _publish(args: argparse.Namespace, rest: list[str]) -> int:
    from .git import git
    from .history.config import AsvConfig

    code, conf = _restore(args.config)
    if code or args.command == "restore":
        return code
    assert isinstance(conf, AsvConfig)
    missing = [b for b in conf.branches if git(conf.path.parent, "rev-parse", "--verify", "--quiet", b) is None]
    if missing and Path(conf.repo).is_dir():
        print(
            f"decodeperf: {conf.path} lists branch(es) {', '.join(missing)} that {conf.repo} does not have; "
            'asv publish graphs commits of those branches: set "branches" to yours',
            file=sys.stderr,
        )
        return 2
    code = subprocess.run([sys.executable, "-m", "asv", "publish", "--config", str(conf.path), *rest]).returncode
    if code == 0 and conf.html_dir.is_dir():
        from .history.dashboard import localize

        left = localize(conf.html_dir)
        print(
            f"decodeperf: dashboard scripts served from {conf.html_dir / 'vendor'}"
            + (f"; still external: {', '.join(left)}" if left else ""),
            file=sys.stderr,
        )
    return code


def _compare(args: argparse.Namespace, rest: list[str]) -> int:
    """asv compare exits 0 even when it shows regressions: this one exits 1 on a worsened row."""
    code, _ = _restore(args.config)
    if code:
        return code
    cmd = [sys.executable, "-m", "asv", "compare", "--config", args.config, *rest, args.old, args.new]
    out = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    if out.returncode:
        return out.returncode
    worse = [line for line in out.stdout.splitlines() if line.startswith("+")]
    if worse:
        print(f"decodeperf: {len(worse)} benchmark(s) worsened from {args.old} to {args.new}", file=sys.stderr)
    return 1 if worse else 0


def _history_sync(args: argparse.Namespace) -> int:
    from .history import sync

    try:
        if args.command == "history-pull":
            text = sync.pull(args.remote, args.branch, Path(args.into))
        elif args.command == "history-last":
            last = sync.last_commit(Path(args.results_dir))
            if last is None:
                print(
                    f"decodeperf: no results commit in {args.results_dir} names the code it measured", file=sys.stderr
                )
                return 1
            print(last)
            return 0
        else:
            results = Path(args.results_dir)
            text = sync.push(results, args.branch, args.message, attempts=args.attempts, commit=args.commit)
    except DecodePerfError as exc:
        print(f"decodeperf: {exc}", file=sys.stderr)
        return 1
    print(f"decodeperf: {text}", file=sys.stderr)
    return 0


def _bisect(args: argparse.Namespace, rest: list[str]) -> int:
    from .ab.bisect_steps import UsageRefused
    from .ab.bisection import report, run, write_json

    def say(line: str) -> None:
        print(line, flush=True)

    mode = "parity" if args.parity else "speed" if args.speed else "auto"
    try:
        bisection = run(args.good, args.bad, mode, rest[1:] if rest[:1] == ["--"] else rest, say)
    except (DecodePerfError, UsageRefused) as exc:
        print(f"decodeperf bisect: {exc}", file=sys.stderr)
        return 2
    code = report(bisection, say)
    if args.json:
        write_json(Path(args.json), bisection)
    bisection.clean()
    return code


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="decodeperf", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure a variant matrix with the engine alone and print the table")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    run.add_argument("--models", default="", help="comma list (default: the device's default model)")
    run.add_argument("--caches", default="none,dynamic,static")
    run.add_argument(
        "--streams",
        default="baseline,deferred,pipelined,nostop",
        help="comma list of stream modes: the loop's, generate()'s (hf-generate), or decoders of yours (--decoders)",
    )
    run.add_argument(
        "--decoders",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module or .py file first: its @decoder functions become stream modes (repeatable)",
    )
    run.add_argument("--batch-sizes", default="1,8")
    run.add_argument("--new-tokens", type=int, default=64)
    run.add_argument("--stop", default="eos", help="eos (rows stop at known steps) or none")
    run.add_argument(
        "--prompt-lens",
        default="",
        help="comma list of prompt lengths, 'mixed' for left-padded rows (default: the device's)",
    )
    run.add_argument(
        "--prompts", default="random", help="random, mixed or text (the corpus, through a checkpoint's tokenizer)"
    )
    run.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    run.add_argument(
        "--attn",
        default="",
        help="comma list of attention kernels: sdpa, eager, flex_attention (default: the model's own)",
    )
    run.add_argument("--rounds", type=int, default=5, help="timed rounds per variant, at least")
    run.add_argument(
        "--max-time",
        type=float,
        default=2.0,
        help="seconds of more rounds per variant once --rounds are in, while the median is not pinned within +-2%%",
    )
    run.add_argument("--warmup", type=int, default=1)
    run.add_argument("--json", default=None, help="also write the records to this file")
    for name, text in (
        ("publish", "restore our benchmark definitions, then asv publish [ARGS]: the dashboard"),
        ("restore", "restore our benchmark definitions in benchmarks.json (after an asv run dropped them)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", default="asv.conf.json", help="asv config (default ./asv.conf.json)")
    cmp = sub.add_parser("compare", help="asv compare OLD NEW [ARGS]; exits 1 when a benchmark worsened")
    cmp.add_argument("--config", default="asv.conf.json", help="asv config (default ./asv.conf.json)")
    cmp.add_argument("old", help="the reference commit (hash, branch or tag)")
    cmp.add_argument("new", help="the commit to judge")
    hpull = sub.add_parser("history-pull", help="clone the results branch into a new or empty directory")
    hpull.add_argument("--remote", required=True, help="git URL or path of the repository that holds the branch")
    hpull.add_argument("--branch", default="asv-results")
    hpull.add_argument("--into", required=True, help="the results directory (asv.conf.json's results_dir)")
    hpush = sub.add_parser("history-push", help="commit and push new results, rebasing onto others' pushes")
    hpush.add_argument("--results-dir", required=True, help="a checkout made by history-pull")
    hpush.add_argument("--branch", default="asv-results")
    hpush.add_argument("--message", default="decode perf results")
    hpush.add_argument("--attempts", type=int, default=5)
    hpush.add_argument("--commit", default=None, help="the code commit these results measured (for history-last)")
    hlast = sub.add_parser("history-last", help="print the code commit of the newest results on the branch")
    hlast.add_argument("--results-dir", required=True, help="a checkout of the results branch")
    bis = sub.add_parser(
        "bisect",
        allow_abbrev=False,
        help="the first commit after GOOD up to BAD that made decoding slower (an A/B against GOOD at each "
        "step) or broke parity; the other arguments go to pytest",
    )
    bis.add_argument("good", metavar="GOOD", help="a commit that was fine (hash, branch or tag)")
    bis.add_argument("bad", metavar="BAD", help="a later commit that is not (BAD's first parents lead to GOOD)")
    what = bis.add_mutually_exclusive_group()
    what.add_argument("--speed", action="store_true", help="bisect a slowdown (default: parity if BAD fails it)")
    what.add_argument("--parity", action="store_true", help="bisect the first commit whose tokens differ")
    bis.add_argument("--json", default=None, help="also write every step and the answer to this file")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parser().parse_known_args(argv)
    if args.command == "run":
        if rest:
            parser().error(f"unrecognized arguments: {' '.join(rest)}")
        return _run(args)
    if args.command == "restore" and rest:
        parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "compare":
        return _compare(args, rest)
    if args.command == "bisect":
        return _bisect(args, rest)
    if args.command in ("history-pull", "history-push", "history-last"):
        if rest:
            parser().error(f"unrecognized arguments: {' '.join(rest)}")
        return _history_sync(args)
    return _publish(args, rest)


if __name__ == "__main__":
    sys.exit(main())

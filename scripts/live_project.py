"""The temporary user project of the live benchmarks (``ab_validity.py``, ``history_validity.py``,
``bisect_validity.py``).

What a user has: the plugin installed in a virtual environment as users install it (``pip install``
of this checkout, not editable), a git project with one decode perf test file, and a
``decode_model`` fixture whose forward busy-waits ``EXTRA_S`` per call (0 s at the first commit), so a
later commit can be slower by a known fraction of the measured step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFTEST = """
import time

import pytest
from pytest_decodeperf import build_model

EXTRA_S = {extra!r}  # busy-wait per forward: the injected slowdown (0 at the first commit)


@pytest.fixture(scope="session")
def _models():
    return {{}}


@pytest.fixture
def decode_model(decode_variant, _models):
    key = (decode_variant.model, decode_variant.dtype)
    if key not in _models:
        model = build_model(decode_variant.model, dtype=decode_variant.dtype)

        def work(*_):
            end = time.perf_counter() + EXTRA_S
            while time.perf_counter() < end:
                pass

        if EXTRA_S:
            model.register_forward_hook(work)
        _models[key] = model
    return _models[key]
"""
TEST = """
import pytest


@pytest.mark.decode_perf(models={model!r}, cache="dynamic", stream=("baseline", "pipelined"), batch_size=2,
                         new_tokens={new_tokens}, stop="none")
def test_decode(decode_result):
    pass
"""


def run(cmd: list[str], cwd: Path, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DECODEPERF", "PYTEST_"))}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def git(cwd: Path, *args: str) -> str:
    out = run(["git", "-c", "user.email=ab@validity", "-c", "user.name=ab-validity", *args], cwd)
    if out.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def make_venv(where: Path) -> Path:
    """A fresh venv with this checkout installed as users install it (CPU torch and transformers pinned)."""
    print(f"# installing the plugin into a fresh venv at {where} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    constraints = str(ROOT / ".ci" / "constraints.txt")
    for args in (["torch"], [str(ROOT)]):
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", constraints, *args], check=True)
    return python


def make_project(where: Path, model: str, new_tokens: int) -> Path:
    """The user's project at its first commit: the code under test, no slowdown."""
    where.mkdir(parents=True)
    (where / "perf").mkdir()
    (where / "perf" / "test_decode.py").write_text(TEST.format(model=model, new_tokens=new_tokens))
    (where / "conftest.py").write_text(CONFTEST.format(extra=0.0))
    git(where, "init", "-q", "-b", "main")
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", "the code under test")
    return where


def set_extra(project: Path, seconds: float, message: str) -> None:
    """Commit a conftest whose forwards busy-wait ``seconds`` each."""
    (project / "conftest.py").write_text(CONFTEST.format(extra=seconds))
    git(project, "commit", "-q", "--allow-empty", "-am", message)


def every_model(
    script: str,
    argv: list[str] | None,
    args: Any,
    work: Path,
    run_model: Callable[[Path, str, Any, list[str], Path], list[str]],
    header: list[str],
) -> None:
    """A benchmark's main loop: the interpreter (a fresh venv unless ``args.python``), ``run_model`` for each
    of ``args.models`` (its table rows), then the date, the machine, the command and the whole table."""
    python = Path(os.path.abspath(args.python)) if args.python else make_venv(work / "venv")
    started = datetime.datetime.now(datetime.timezone.utc)
    options = args.pytest_args.split()
    rows: list[str] = []
    for model in [m for m in args.models.split(",") if m]:
        rows += run_model(python, model, args, options, work)
    command = " ".join([f"python scripts/{script}", *(argv if argv is not None else sys.argv[1:])])
    print(f"\n{started:%Y-%m-%d}, {platform.node()} ({os.cpu_count()} CPUs), `{command}`:\n")
    print("\n".join([*header, *rows]))


def arguments(doc: str | None, models: str, slowdowns: str) -> argparse.ArgumentParser:
    """The options every live benchmark has; a script adds its own counts."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=models)
    parser.add_argument("--slowdowns", default=slowdowns, help="busy-wait per forward, fractions of a step")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--python", type=Path, help="an interpreter with the plugin installed (default: a fresh venv)")
    parser.add_argument("--pytest-args", default="", help="extra options for every session, e.g. the A/B budget")
    return parser


def benchmark(
    script: str,
    argv: list[str] | None,
    parser: argparse.ArgumentParser,
    run_model: Callable[[Path, str, Any, list[str], Path], list[str]],
    header: list[str],
    own_home: bool = False,
) -> int:
    """Parse, then ``every_model`` in a temporary folder removed afterwards; ``own_home`` points HOME
    into it (asv's machine file stays out of the real home)."""
    args = parser.parse_args(argv)
    args.slowdowns = [float(s) for s in args.slowdowns.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix=f"{Path(script).stem.replace('_', '-')}-"))
    old_home = os.environ.get("HOME")
    if own_home:
        os.environ["HOME"] = str(work / "home")
        (work / "home").mkdir()
    try:
        every_model(script, argv, args, work, run_model, header)
    finally:
        if own_home and old_home is not None:
            os.environ["HOME"] = old_home
        shutil.rmtree(work, ignore_errors=True)
    return 0


def step_ms(python: Path, project: Path, options: list[str]) -> float:
    """The baseline variant's ms/token in a plain run of the first commit."""
    out = project / "plain.json"
    proc = run([str(python), "-m", "pytest", "perf", "--decodeperf", f"--decodeperf-json={out}", *options], project)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"the plain run failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    records = json.loads(out.read_text())["results"]
    out.unlink()
    return float(next(r["ms_per_token"] for r in records if r["stream"] == "baseline"))

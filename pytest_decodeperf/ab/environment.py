"""What each side of an A/B runs with, and what differs between them (``--decodeperf-ab-python``).

The most common source of a decode regression is a dependency upgrade, not the project's own code, so
side A may run with another interpreter (another venv). Each worker reports its interpreter and the
version of every distribution it can import (``worker.py``'s first message); the verdict names the
ones that differ, so a red A/B says "transformers 5.17.0 -> 5.24.0" rather than only "worse".

Before any worker starts, :func:`check_interpreter` asks the other interpreter, in one short process,
whether it can run a side at all (pytest, torch, transformers and the plugin), so a wrong path or a
bare venv is one line rather than a worker that dies in its log.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

from ..errors import DecodePerfError

KEY = ("python", "torch", "transformers")  # always in the record, whether they differ or not
SHOWN = 4  # differing distributions named in a line; the record has them all

_PROBE = """
import importlib.metadata, importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
need = ("pytest", "torch", "transformers", "pytest_decodeperf")
missing = [m for m in need if importlib.util.find_spec(m) is None]
plugins = {ep.name for ep in importlib.metadata.entry_points(group="pytest11")}
if "pytest_decodeperf" not in missing and "decodeperf" not in plugins:
    missing.append("pytest-decodeperf's pytest plugin (it is not installed there)")
print(json.dumps(missing))
"""


def check_interpreter(python: str, tree: Path, env: Mapping[str, str]) -> None:
    """Refuse, in one line, an interpreter that cannot run side A in ``tree`` (its own tree first on the path)."""
    try:
        proc = subprocess.run(
            [python, "-c", _PROBE, str(tree)],
            cwd=tree,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DecodePerfError(f"--decodeperf-ab-python: {python} could not be run: {exc}") from None
    lines = proc.stdout.strip().splitlines()
    try:
        missing = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    except json.JSONDecodeError:
        missing = None
    if not isinstance(missing, list):
        tail = ([*proc.stderr.strip().splitlines(), *lines] or ["no output"])[-1]
        raise DecodePerfError(
            f"--decodeperf-ab-python: {python} is not a Python that runs (exit {proc.returncode}): {tail}"
        )
    if missing:
        raise DecodePerfError(
            f"--decodeperf-ab-python: {python} cannot run side A: no {', '.join(missing)} in that environment "
            "(install pytest, torch, transformers and pytest-decodeperf there)"
        )


Versions = dict[str, str]


def versions_of(environment: Mapping[str, object]) -> Versions:
    versions = environment.get("versions", {})
    return dict(versions) if isinstance(versions, dict) else {}


def differing(a: Versions, b: Versions) -> dict[str, tuple[str | None, str | None]]:
    """Every name whose version differs (None: absent on that side), the key ones first, then by name."""
    names = sorted(set(a) | set(b), key=lambda n: (n not in KEY, KEY.index(n) if n in KEY else 0, n))
    return {n: (a.get(n), b.get(n)) for n in names if a.get(n) != b.get(n)}


def record_versions(a: Versions, b: Versions) -> dict[str, list[str | None]]:
    """The record's ``versions``: [A, B] of the key ones, and of every distribution that differs."""
    out: dict[str, list[str | None]] = {n: [a.get(n), b.get(n)] for n in KEY}
    out.update({n: [va, vb] for n, (va, vb) in differing(a, b).items()})
    return out


def describe(a: Versions, b: Versions) -> str:
    """One phrase, A -> B: ``transformers 5.17.0 -> 5.24.0, tokenizers 0.21.0 -> 0.22.1 and 3 more``."""
    diff = differing(a, b)
    parts = [f"{n} {va or 'absent'} -> {vb or 'absent'}" for n, (va, vb) in list(diff.items())[:SHOWN]]
    more = f" and {len(diff) - SHOWN} more" if len(diff) > SHOWN else ""
    return ", ".join(parts) + more

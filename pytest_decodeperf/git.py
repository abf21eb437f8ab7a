"""``git`` as a subprocess, for the few questions the history and the A/B gate ask of a checkout.

Light on purpose (no asv, no torch): the A/B gate asks these before anything heavy is imported.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(repo_dir: str | Path, *args: str) -> str | None:
    """``git ARGS`` in ``repo_dir``: its output, or None when git fails (not a checkout, no such commit)."""
    try:
        out = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None

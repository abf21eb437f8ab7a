"""The one way this package writes a file: to a temp file beside it, then renamed over.

Readers (asv, a dashboard, a second pytest-xdist worker) see the old file or the new one, never
half of one; a write that fails or is killed leaves the old file and no temp file behind (a killed
writer's ``.NAME.*.tmp`` is swept by the next writer under the history lock).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``.NAME.*.tmp`` in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp name does not end in .json: asv reads every *.json in a results folder.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a metric that could not be measured is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON (NaN and infinity as null), written atomically."""
    write_text_atomic(path, json.dumps(finite(payload), indent=2, allow_nan=False))

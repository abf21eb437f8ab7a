"""What each option's value may be: the parsers of the option table (``options.py``), each raising one line that
says what it wanted. The engine's registries are imported only when a value must be checked against them: loading
the plugin must not import torch (pytest loads it in every session where the package is installed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import DecodePerfError, check_choice

__all__ = [
    "_attn_names",
    "_bool",
    "_cache_names",
    "_checkpoint",
    "_csv",
    "_dir",
    "_int",
    "_interpreter",
    "_ints",
    "_labels",
    "_names",
    "_pct",
    "_profile",
    "_prompt_lens",
    "_seconds",
    "_stream_mode_names",
    "_timeout",
    "_writable_file",
    "check_writable_dir",
]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


def _names(what: str, allowed: Callable[[], Any]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = _csv(text)
        if not values:
            raise DecodePerfError(f"empty {what} list")
        for value in values:
            check_choice(what, value, allowed())
        return values

    return parse


def _int(what: str, minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise DecodePerfError(f"{what} must be an integer, got {text!r}") from None
        if value < minimum:
            raise DecodePerfError(f"{what} must be >= {minimum}, got {value}")
        return value

    return parse


def _labels(what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = _csv(text)
        if not values:
            raise DecodePerfError(f"empty {what} list")
        return values

    return parse


def _ints(what: str) -> Callable[[str], tuple[int, ...]]:
    one = _int(what, 1)

    def parse(text: str) -> tuple[int, ...]:
        values = _csv(text)
        if not values:
            raise DecodePerfError(f"empty {what} list")
        return tuple(one(v) for v in values)

    return parse


def _prompt_lens(text: str) -> tuple[int | str, ...]:
    from .marker import check_prompt_len

    values = _csv(text)
    if not values:
        raise DecodePerfError("empty prompt length list")
    return tuple(check_prompt_len(v) for v in values)


def _checkpoint(text: str) -> str:
    path = Path(str(text).strip()).expanduser()
    if not (path / "config.json").is_file():
        what = "has no config.json (save it with save_pretrained())" if path.is_dir() else "is not a directory"
        raise DecodePerfError(f"checkpoint {str(path)!r} {what}")
    return str(path)


def _bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise DecodePerfError(f"expected true or false, got {text!r}")


def _writable_file(text: str) -> Path:
    path = Path(text).expanduser()
    return _in_writable_dir(path.parent if str(path.parent) else Path("."), path)


def _dir(text: str) -> Path:
    return check_writable_dir(Path(text).expanduser())


def check_writable_dir(path: Path) -> Path:
    """A directory that exists and is writable, or can be made in an existing writable parent."""
    if path.exists() and not path.is_dir():
        raise DecodePerfError(f"{str(path)!r} exists and is not a directory")
    return _in_writable_dir(path if path.exists() else path.parent, path)


def _in_writable_dir(directory: Path, path: Path) -> Path:
    """``path``, once ``directory`` (where it is written) is an existing writable directory."""
    if not directory.is_dir():
        raise DecodePerfError(f"directory {str(directory)!r} does not exist (for {str(path)!r})")
    if not os.access(directory, os.W_OK):
        raise DecodePerfError(f"directory {str(directory)!r} is not writable (for {str(path)!r})")
    return path


def _interpreter(text: str) -> str:
    """An interpreter's path made absolute but not resolved: a venv's ``bin/python`` is a link to the base
    interpreter, and only the link's path makes Python start in that venv."""
    path = Path(str(text).strip()).expanduser()
    if not path.exists():
        raise DecodePerfError(f"interpreter {str(path)!r} does not exist")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise DecodePerfError(f"interpreter {str(path)!r} is not an executable file")
    return os.path.abspath(path)


def _profile(text: str) -> tuple[int, int]:
    from .engine.measure.nvtx import parse_profile_steps

    return parse_profile_steps(text)


# The engine's registries are imported only when a value must be checked against them: loading the
# plugin must not import torch (pytest loads it in every session where the package is installed).
def _cache_names() -> list[str]:
    from .engine.decode.caches import CACHES

    return list(CACHES)


def _attn_names() -> tuple[str, ...]:
    from .engine.spec.attention import ATTN_KERNELS

    return ATTN_KERNELS


def _stream_mode_names() -> list[str]:
    from .engine.decode.stream_modes import stream_mode_names

    return stream_mode_names()


def _seconds(text: str) -> float:
    try:
        value = float(str(text).strip().removesuffix("s"))
    except ValueError:
        raise DecodePerfError(f"expected seconds such as 1 or 0.5, got {text!r}") from None
    if not 0 <= value <= 3600:
        raise DecodePerfError(f"seconds must be between 0 and 3600, got {value:g}")
    return value


def _timeout(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise DecodePerfError(f"a timeout must be above 0 seconds, got {value:g}")
    return value


def _pct(text: str) -> float:
    try:
        value = float(str(text).rstrip("%"))
    except ValueError:
        raise DecodePerfError(f"expected a percentage such as 5 or 5%, got {text!r}") from None
    if not 0 <= value < 1000:
        raise DecodePerfError(f"percentage must be between 0 and 1000, got {value}")
    return value

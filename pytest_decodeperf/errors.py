"""The one exception type users see for bad input, and the helpers that raise it.

Every check names the bad value and what would have been accepted, so a typo in a
command line or a marker reads as one line, not a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class DecodePerfError(ValueError):
    """Bad input to the engine: an unknown name, an impossible size, an unsupported device."""


def check_choice(what: str, value: str, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise naming both."""
    choices = sorted(allowed)
    if value not in choices:
        raise DecodePerfError(f"unknown {what} {value!r}; choose from: {', '.join(choices)}")
    return value


def check_positive(what: str, value: int) -> int:
    """Return ``value`` if it is an int >= 1, else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DecodePerfError(f"{what} must be an integer >= 1, got {value!r}")
    return value

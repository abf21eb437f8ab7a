"""What a run's numbers depend on beyond the code under test, and how two runs' differ.

The history gate and the A/B put two runs side by side to judge the code. When the two ran on another torch,
another driver, other GPU clocks, a CPU under another governor or another thread count, a difference may be the
machine's: a machine change is not a regression. So every record carries the fingerprint of the machine it ran
on (``ResultRecord.fingerprint``), the history keeps it with each commit's results (asv's requirements, and
``machine.json``), and a comparison says when the two sides' fingerprints differ beyond the packages it puts
under test (none for the history: the code under test is the checkout, not a package).

Strings only: asv keeps requirements as strings, and two fingerprints compare as text. Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

# In the order a reader checks them; a key a side could not read is absent, and compared only where both have it.
KEYS = (
    "torch",
    "transformers",
    "cuda",
    "gpu_driver",
    "gpu_name",
    "gpu_clocks",
    "cpu",
    "cpu_governor",
    "threads",
    "python",
)


def clocks(mhz: Mapping[str, int] | None) -> str | None:
    """The GPU's configured clocks, ``app sm 1755 mem 2619, max sm 1980 mem 2619 (MHz)``; the current clocks
    (``sm``, ``mem``) stay out: they follow the load, not the machine's configuration."""
    if not mhz:
        return None
    parts = []
    for kind in ("app", "max"):
        both = [f"{unit} {mhz[f'{kind}_{unit}']}" for unit in ("sm", "mem") if f"{kind}_{unit}" in mhz]
        if both:
            parts.append(f"{kind} {' '.join(both)}")
    return ", ".join(parts) + " (MHz)" if parts else None


def of(machine: Mapping[str, Any]) -> dict[str, str]:
    """The fingerprint of a ``MachineInfo`` (``records.py``): the keys of ``KEYS`` it could read, as strings."""
    out: dict[str, str] = {}
    for key in KEYS:
        value = clocks(machine.get("gpu_clocks_mhz")) if key == "gpu_clocks" else machine.get(key)
        if value is not None and value != "":
            out[key] = str(value)
    return out


def differences(old: Mapping[str, str], new: Mapping[str, str], under_test: Collection[str] = ()) -> list[str]:
    """``torch 2.4.0 -> 2.5.1`` for each key both sides hold with different values, but the packages under test.

    The A/B across environments puts packages under test on purpose (their versions differ by design); the
    history gate puts none. An older side without a key is not a difference: nothing says what it had.
    """
    return [
        f"{key} {old[key]} -> {new[key]}"
        for key in KEYS
        if key not in under_test and key in old and key in new and str(old[key]) != str(new[key])
    ]


def describe(diffs: list[str], old: str = "the reference", new: str = "this run") -> str | None:
    """One line for a comparison's report, or None when the fingerprints agree."""
    if not diffs:
        return None
    return (
        f"the environments differ beyond the code under test ({old} -> {new}): {'; '.join(diffs)}: a difference "
        "in the numbers may be the machine's, not the code's (a machine change is not a regression)"
    )

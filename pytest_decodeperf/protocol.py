"""What a worker process reads from the plugin: the protocol between versions of this package.

The A/B's sides (``ab/worker.py``) and the tensor-parallel ranks (``tp/worker.py``) are pytest sessions run
by *this* checkout's worker script, but the package they import is their tree's: under ``--decodeperf-ab=REF``
side A runs REF's package, older or newer than the script. So what a worker asks of the package it finds is a
protocol, named here and kept stable:

* ``PROTOCOL``: this module's version (2). Version 1 had no module: a worker read ``MODEL_KEY``,
  ``_item_param`` and ``_session`` off the plugin module (``pytest_decodeperf.plugin``, registered as
  ``decodeperf``) and ``PairedRounds(runner, model, variant)`` from ``pytest_decodeperf.engine.paired``. Those
  names stay where they were, for workers of older commits (``tests/test_ab.py`` A/Bs across the change, both ways).
* ``item_param(item)``: an item's ``(variant, parity)``, None for an unmarked item.
* ``model_of(item)`` / ``drop_model(item)``: the model the item's fixtures set up (None before setup, or
  when this process sits the item out), and taking it away so the item does not measure itself.
* ``session(config)``: the plugin's session object (``records``, ``runner``).
* ``paired_rounds(item)``: the item made ready for single timed rounds (``warm()``, ``round()``,
  ``syncs_per_step()``): what an A/B side serves.

Imports nothing heavy: a worker reads it before any test runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .engine.paired import PairedRounds
    from .engine.spec.variants import Variant
    from .session import DecodePerfSession

PROTOCOL = 2
SESSION_KEY = pytest.StashKey["DecodePerfSession"]()
MODEL_KEY = pytest.StashKey[Any]()
PARAM = "_decodeperf_param"  # the parametrized argument that carries (variant, parity)


def item_param(item: pytest.Item) -> tuple[Variant, bool] | None:
    """``(variant, parity)`` of a ``decode_perf`` item, None for any other item."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    value = callspec.params.get(PARAM)
    return value if isinstance(value, tuple) else None


def session(config: pytest.Config) -> DecodePerfSession:
    """The plugin's session of this pytest run."""
    return config.stash[SESSION_KEY]


def model_of(item: pytest.Item) -> Any:
    """The model this item's fixtures set up, or None (not set up, or a rank that sits the item out)."""
    return item.stash.get(MODEL_KEY, None)


def drop_model(item: pytest.Item) -> None:
    """Take the item's model away: its call phase then measures nothing (a worker measures it instead)."""
    if MODEL_KEY in item.stash:
        del item.stash[MODEL_KEY]


def paired_rounds(item: pytest.Item) -> PairedRounds:
    """The item, set up, as single timed rounds on demand (the A/B side's unit of work)."""
    from .engine.paired import PairedRounds

    param = item_param(item)
    model = model_of(item)
    if param is None or model is None:
        raise LookupError(f"{item.nodeid} is not a set-up decode_perf item")
    return PairedRounds(session(item.config).runner, model, param[0])

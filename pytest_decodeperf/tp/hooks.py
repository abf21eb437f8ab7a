"""What the plugin's hooks ask of tensor parallel, so ``plugin.py`` stays a thin layer: at configure, whether this
process is a rank of a launch (and joining its process group) or a session that may start ranks; at collection,
the variants a ``tp`` value can have here (``checks.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ..errors import DecodePerfError
from . import checks

if TYPE_CHECKING:
    from ..engine.spec.variants import Variant
    from ..session import DecodePerfSession


def _xdist_workers(config: pytest.Config) -> int | None:
    """How many xdist workers share this machine (None: no xdist)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput.get("workercount", 1))
    n = config.getoption("numprocesses", None)
    return n if isinstance(n, int) and n > 0 else None


def configure(config: pytest.Config, session: DecodePerfSession) -> None:
    """This process as a rank of a launch (it joins the process group now, as every rank must), or the session
    that starts ranks for its tp>1 items; what cannot go together is refused in one line."""
    from ..engine.parallel.distributed import rank_env
    from .plugin import TensorParallelPlugin

    plugin = TensorParallelPlugin(session)
    config.pluginmanager.register(plugin, "decodeperf-tp")
    settings = session.settings
    wanted = max(settings.tp or (1,))
    try:
        env = rank_env()
        if env is not None:
            if _xdist_workers(config):
                raise DecodePerfError("under torchrun or srun every process is a rank already; drop -n (xdist)")
            if settings.ab is not None:
                raise DecodePerfError("--decodeperf-ab does not run under torchrun or srun; run it on one process")
            launch = checks.Devices(env.world_size, f"this launch has {env.world_size} ranks", True)
            problems = [p for t in settings.tp or () if (p := checks.device_problem(t, launch)) is not None]
            if problems:
                raise DecodePerfError(problems[0])
            from .ranks import RankSession

            plugin.ranks = RankSession(env)
            plugin.ranks.start(session.device, settings.tp_timeout)
            session.ranks = plugin.ranks
            return
        if wanted > 1 and settings.ab is not None:
            raise DecodePerfError("--decodeperf-ab does not A/B tensor-parallel variants yet; drop --decodeperf-tp")
        if wanted > 1:
            workers = _xdist_workers(config)
            problem = checks.device_problem(wanted, checks.devices(settings.device, None, workers))
            if problem is not None:
                raise DecodePerfError(f"-n {workers} with {problem}" if workers else problem)
    except DecodePerfError as exc:
        raise pytest.UsageError(f"pytest-decodeperf: {exc}") from None


def select(config: pytest.Config, session: DecodePerfSession, variants: list[Variant], custom: bool) -> list[Variant]:
    """The variants a test keeps (``checks.tp_variants``); what ``--decodeperf-tp`` could not add is noted once."""
    if all(v.tp == 1 for v in variants):
        return variants
    launched = session.ranks.env.world_size if session.ranks is not None else None
    devices = checks.devices(session.settings.device, launched, _xdist_workers(config))
    kept = checks.tp_variants(variants, devices, session.settings.tp is not None, custom)
    for variant in variants:
        problem = None if variant in kept else checks.shard_problem(variant.model, variant.tp)
        if problem is not None and problem not in session.not_run:
            session.not_run.append(problem)
    return kept

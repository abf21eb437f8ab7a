"""What a ``tp`` value needs, checked at collection: the devices (or a launch of that size) and a model transformers
can shard. A ``tp`` a marker asks for and cannot have is the test's collection error, in one line; the variants
``--decodeperf-tp`` adds for a model transformers cannot shard are left out, said once.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.spec.variants import Variant


@dataclass(frozen=True)
class Devices:
    """How many ranks this session can give an item."""

    count: int
    what: str  # for a message: "this machine has 2 CPU cores"
    launched: bool  # the ranks are a launcher's (torchrun, srun): tp must be 1 or all of them
    device_type: str = "cpu"


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def devices(device: str, launched_world: int | None, xdist_workers: int | None = None) -> Devices:
    """The ranks an item may have: a launch's size, else one GPU per rank, else one CPU core per rank."""
    if launched_world is not None:
        return Devices(launched_world, f"this launch has {launched_world} ranks", True)
    from ..engine.device.machine import resolve_device
    from ..engine.device.runtime import cuda_device_count

    if resolve_device(device).type == "cuda":
        gpus = cuda_device_count()
        where = "this xdist worker sees" if xdist_workers else "this machine has"
        return Devices(gpus, f"{where} {gpus} GPU(s) (one per rank)", False, "cuda")
    cores = cpu_cores() // (xdist_workers or 1)
    where = f"each of {xdist_workers} xdist workers has" if xdist_workers else "this machine has"
    return Devices(cores, f"{where} {cores} CPU core(s) (one per rank)", False)


def device_problem(tp: int, devices: Devices) -> str | None:
    """Why ``tp`` ranks cannot run here (None: they can)."""
    if tp <= 1:
        return None
    if devices.launched and tp != devices.count:
        return f"tp={tp}: {devices.what}, and transformers shards over all of them: tp must be 1 or {devices.count}"
    if not devices.launched and tp > devices.count:
        return f"tp={tp} needs {tp} devices; {devices.what}"
    if devices.device_type == "cpu" and not devices.launched:
        from ..engine.device.runtime import cuda_device_count

        if cuda_device_count():
            return f"tp={tp} on the CPU of a machine with CUDA: transformers builds its device mesh on the GPU"
    return None


@functools.cache
def shard_problem(model: str, tp: int) -> str | None:
    """Why transformers cannot shard zoo model or checkpoint ``model`` over ``tp`` ranks (None: it can)."""
    if tp <= 1:
        return None
    from ..engine.parallel.tensor_parallel import model_config, shard_refusal
    from ..engine.spec.models import MODELS, is_checkpoint

    if model not in MODELS and not is_checkpoint(model):
        return None  # a label of the user's own decode_model: checked when it is loaded
    refusal = shard_refusal(model_config(model), tp)
    return None if refusal is None else f"tp={tp}: {model}: {refusal}"


def tp_variants(variants: list[Variant], devices: Devices, from_option: bool, custom_model: bool) -> list[Variant]:
    """The variants that can run; a marker's that cannot raise ``DecodePerfError`` (one line). With the option,
    a model transformers cannot shard keeps its tp=1 variants only (``shard_problem`` says why)."""
    from ..errors import DecodePerfError

    kept = []
    for variant in variants:
        problem = device_problem(variant.tp, devices)
        if problem is not None:
            raise DecodePerfError(problem)
        problem = None if custom_model else shard_problem(variant.model, variant.tp)
        if problem is not None and not from_option:
            raise DecodePerfError(problem)
        if problem is None:
            kept.append(variant)
    return kept

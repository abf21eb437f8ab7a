"""pytest-xdist: one worker per GPU, and every worker's records merged on the controller.

The controller hands each worker one GPU through ``workerinput`` (``--decodeperf-tp=N``: N of them, one per
tensor-parallel rank) and the worker pins itself with ``CUDA_VISIBLE_DEVICES`` before anything touches CUDA.
More workers than GPUs is refused unless ``--decodeperf-share-gpu`` is given: two workers timing on one GPU
disturb each other's numbers.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

GPU_KEY = "decodeperf_gpu"
RECORDS_KEY = "decodeperf_records"


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES names them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch  # only on the controller of an xdist run with --decodeperf

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def assign_gpu(node: Any, share: bool, wants_cuda: bool, per_worker: int = 1) -> None:
    """Controller side: give worker ``gwN`` the N-th visible GPU (the N-th ``per_worker`` of them)."""
    gpus = visible_gpus()
    if not wants_cuda or not gpus:
        return
    index = int(str(node.workerinput["workerid"]).removeprefix("gw"))
    if per_worker > 1:  # tensor-parallel ranks: their own GPUs, never shared (tp/hooks.py checked they suffice)
        node.workerinput[GPU_KEY] = ",".join(gpus[index * per_worker : (index + 1) * per_worker])
        return
    if index >= len(gpus) and not share:
        raise pytest.UsageError(
            f"pytest-decodeperf: worker {node.workerinput['workerid']} has no GPU of its own ({len(gpus)} visible); "
            f"use -n {len(gpus)} or fewer, or --decodeperf-share-gpu to time several workers on one GPU"
        )
    node.workerinput[GPU_KEY] = gpus[index % len(gpus)]


def pin_worker_gpu(config: pytest.Config) -> None:
    """Worker side, before CUDA initializes: see only the GPU the controller assigned."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and workerinput.get(GPU_KEY) is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(workerinput[GPU_KEY])


def check_worker_gpu(config: pytest.Config) -> None:
    """Worker side, after CUDA is up: the pin took only if this worker sees exactly one GPU.

    CUDA reads ``CUDA_VISIBLE_DEVICES`` once, at initialisation: a conftest or plugin that touched
    CUDA before ours pinned the worker leaves it seeing every GPU, timing on someone else's.
    """
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or workerinput.get(GPU_KEY) is None:
        return
    import torch

    seen = torch.cuda.device_count()
    if seen != len(str(workerinput[GPU_KEY]).split(",")):
        raise pytest.UsageError(
            f"pytest-decodeperf: worker {workerinput.get('workerid')} was assigned GPU {workerinput[GPU_KEY]} but sees "
            f"{seen} GPUs: CUDA was initialised before the plugin could set CUDA_VISIBLE_DEVICES (a conftest importing "
            "and using torch.cuda at import time?)"
        )

"""Ranks: the rendezvous torchrun sets, the process group, and what ranks agree on between rounds.

Tensor-parallel decode runs one process per rank, every rank the same program in lockstep (torchrun's
model). Whoever starts them (torchrun, SLURM's ``srun``, or the plugin itself, which sets the variables
torchrun would), a rank finds its place in the environment and joins two groups:

* the **data** group, ``torch.distributed``'s default: the model's own collectives (transformers'
  tensor-parallel layers), NCCL on CUDA (one GPU per rank, ``LOCAL_RANK``), gloo on the CPU. Its
  ``timeout`` bounds how long a rank waits in a collective for a rank that died or raised: nothing hangs.
* a **control** group (gloo, on the host): what the harness itself exchanges, always after a round and never
  inside the timed region: each round's times (the slowest rank's count), the generated tokens (gathered
  once, compared), the counts of syncs and collectives, and each test phase's outcome. Its timeout is longer:
  a rank idles there while rank 0 alone runs a tp=1 item.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ...errors import DecodePerfError
from ..device.runtime import bind_cuda_device

LAUNCHER_VAR = "DECODEPERF_TP_LAUNCHER"  # set by the plugin on the ranks it starts: "plugin"
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class RankEnv:
    """This process's place among the ranks, as its launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # "torchrun" (its variables), "slurm" (srun's), or "plugin" (ranks the plugin started)

    def torchrun_vars(self) -> dict[str, str]:
        """The variables torchrun would set: transformers reads ``LOCAL_RANK`` to pick a rank's GPU."""
        values = (self.rank, self.world_size, self.local_rank, self.local_world_size)
        return {name: str(value) for name, value in zip(TORCHRUN_VARS, values, strict=True)}


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None and default is not None:
        return default
    match = re.match(r"\s*(\d+)", raw or "")  # SLURM_TASKS_PER_NODE reads like "4(x2)"
    if match is None:
        raise DecodePerfError(f"environment variable {name}={raw!r} is not a number")
    return int(match.group(1))


def rank_env(environ: Mapping[str, str] | None = None) -> RankEnv | None:
    """The launch this process belongs to (None: a single process, or a launch of one rank).

    torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` first; else SLURM's ``SLURM_PROCID``/
    ``SLURM_NTASKS``/``SLURM_LOCALID``/``SLURM_NTASKS_PER_NODE``, with ``MASTER_ADDR`` and ``MASTER_PORT`` set by
    the job script (SLURM names no rendezvous).
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE")
        if world <= 1:
            return None
        rank = _int(env, "RANK")
        local = _int(env, "LOCAL_RANK", rank)
        launcher = env.get(LAUNCHER_VAR, "torchrun")
        return RankEnv(rank, world, local, _int(env, "LOCAL_WORLD_SIZE", world), launcher)
    if "SLURM_PROCID" in env and _int(env, "SLURM_NTASKS", 1) > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if missing:
            raise DecodePerfError(
                f"under SLURM ({env.get('SLURM_NTASKS')} tasks) set {' and '.join(missing)} in the job script: the "
                "first node's name and a free port (README: tensor parallel, many nodes)"
            )
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        per_node = _int(env, "SLURM_NTASKS_PER_NODE", _int(env, "SLURM_TASKS_PER_NODE", world))
        return RankEnv(rank, world, _int(env, "SLURM_LOCALID", rank % per_node), per_node, "slurm")
    return None


def launch_env(rank: int, world_size: int, port: int, addr: str = "127.0.0.1") -> dict[str, str]:
    """What torchrun would set for rank ``rank`` of ``world_size`` on one node (the plugin's own ranks)."""
    env = RankEnv(rank, world_size, rank, world_size, "plugin").torchrun_vars()
    return {**env, "MASTER_ADDR": addr, "MASTER_PORT": str(port), LAUNCHER_VAR: "plugin"}


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (torchrun's standalone rendezvous picks one the same way)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes (transformers' own map)."""
    return "nccl" if device.type == "cuda" else "gloo"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RankGroup:
    """This rank's data and control groups (see the module docstring). One per process, made once."""

    def __init__(self, env: RankEnv, device: torch.device, timeout_s: float, control_timeout_s: float):
        self.env = env
        self.device = device
        self.backend = backend_for(device)
        self.timeout_s = timeout_s
        if device.type == "cuda":
            bind_cuda_device(env.local_rank)
        os.environ.update(env.torchrun_vars())  # SLURM's ranks too: transformers binds its device by LOCAL_RANK
        try:
            if not dist.is_initialized():
                dist.init_process_group(
                    self.backend,
                    rank=env.rank,
                    world_size=env.world_size,
                    timeout=timedelta(seconds=timeout_s),
                    device_id=torch.device("cuda", env.local_rank) if self.backend == "nccl" else None,
                )
            self.control: Any = dist.new_group(backend="gloo", timeout=timedelta(seconds=control_timeout_s))
        except Exception as exc:  # a rendezvous that never completes, a port taken: one line
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise DecodePerfError(
                f"rank {env.rank} of {env.world_size} could not join the process group at {where} "
                f"({self.backend}): {_first_line(exc)}"
            ) from None

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    def exchange(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.control)
        return out

    def slowest(self, values: Sequence[float]) -> list[float]:
        """Each figure's largest value over the ranks (a round's times: the slowest rank's), on every rank.

        Called after a round, never inside one. Ranks that disagree on how many figures there are (one ran
        more decode steps: they diverged) raise on every rank alike.
        """
        seen = self.exchange([float(v) for v in values])
        lengths = {len(v) for v in seen}
        if len(lengths) > 1:
            counts = ", ".join(f"rank {r}: {len(v)}" for r, v in enumerate(seen))
            raise DecodePerfError(f"the ranks timed different numbers of steps ({counts}): they diverged")
        return [max(column) for column in zip(*seen, strict=True)]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

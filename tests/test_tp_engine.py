"""Tensor parallel, the engine's side, in one process: the launch's variables, what transformers can shard, rounds
counted as their slowest rank's, collectives counted by op (and seen by the CUDA simulator on their stream), a
rank's roofline, and a rank whose tokens diverge named. Ranks for real: ``test_tp_ranks.py``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
import torch.distributed as dist
from test_measure import FakeRounds
from transformers import GPT2Config, LlamaConfig

from pytest_decodeperf import DecodePerfError
from pytest_decodeperf.engine.device.sim_cuda import SimRuntime, SimulatedRaceError
from pytest_decodeperf.engine.measure.collectives import CollectiveCounter
from pytest_decodeperf.engine.measure.rounds import Budget, measure
from pytest_decodeperf.engine.parallel.distributed import launch_env, rank_env
from pytest_decodeperf.engine.parallel.tensor_parallel import Sharded, shard_refusal, sharded_roofline
from pytest_decodeperf.engine.results import Roofline
from pytest_decodeperf.engine.roofline.analytic import StepBytes
from pytest_decodeperf.engine.spec.variants import Variant


def test_a_rank_reads_its_place_from_torchrun_or_slurm_and_one_process_is_no_launch() -> None:
    env = rank_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert env is not None and (env.rank, env.world_size, env.local_rank, env.launcher) == (1, 2, 1, "torchrun")
    assert rank_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert rank_env({}) is None
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "4(x2)"}
    env = rank_env({**slurm, "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})
    assert env is not None and (env.rank, env.world_size, env.local_rank, env.local_world_size) == (5, 8, 1, 4)
    assert env.torchrun_vars() == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    with pytest.raises(DecodePerfError, match="set MASTER_ADDR and MASTER_PORT in the job script"):
        rank_env(slurm)
    plugin = rank_env(launch_env(1, 2, 29501))
    assert plugin is not None and (plugin.rank, plugin.launcher) == (1, "plugin")


def test_what_transformers_cannot_shard_is_said_in_one_line() -> None:
    assert "GPT2Config has no tensor-parallel plan" in str(shard_refusal(GPT2Config(), 2))
    llama = LlamaConfig(num_attention_heads=8, num_key_value_heads=2, hidden_size=128)
    assert shard_refusal(llama, 2) is None and shard_refusal(llama, 1) is None
    assert shard_refusal(llama, 4) == "tp=4 does not divide LlamaConfig's 8 query / 2 key-value heads"


def test_each_round_counts_as_its_slowest_rank_and_every_rank_decides_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRounds(monkeypatch)
    seen: list[list[float]] = []

    def peer_twice_as_slow(values: Sequence[float]) -> list[float]:  # what RankGroup.slowest returns
        seen.append(list(values))
        return [max(v, 2 * v) for v in values]

    wild = [1.0, 2.0] * 10  # never pinned: the time budget ends the rounds
    m = measure(fake.of(wild), torch.device("cpu"), Budget(2, max_time_s=5.0), 1, combine=peer_twice_as_slow)
    assert m.warmup_s == [2.0] and [r.total_s for r in m.rounds] == [4.0, 2.0, 4.0, 2.0]
    # the budget runs on the slowest rank's time past the 2 minimum rounds: 6 s after 2 more (this rank alone:
    # 3 s, so it would go on for one more round)
    assert [v[2] for v in seen[1:]] == [2.0, 3.0, 2.0, 3.0]
    assert len(measure(fake.of(wild), torch.device("cpu"), Budget(2, max_time_s=5.0), 1).rounds) == 5


@pytest.fixture(scope="module")
def one_rank() -> Iterator[None]:
    """A process group of one rank in this process: collectives run (gloo) and dispatch their c10d ops."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class Sharded2(torch.nn.Module):
    """A forward that all-reduces twice and all-gathers once, as a row-wise layer pair and a gathered head do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x)
        dist.all_reduce(x)
        out = torch.empty(x.numel(), dtype=x.dtype)
        dist.all_gather_single(out, x)
        return out


def test_collectives_are_counted_by_op_per_decode_step_with_their_payload(one_rank: None) -> None:
    model = Sharded2()
    with torch.no_grad(), CollectiveCounter().watching(model) as counter:
        for _ in range(4):  # prefill, then 3 decode steps
            model(torch.ones(8))
        dist.all_reduce(torch.ones(1))  # outside any forward: still the last step's
    report = counter.report()
    assert report.decode_steps == 3 and report.prefill == 3
    assert report.by_op == pytest.approx({"all_reduce": 7 / 3, "all_gather": 1.0})
    assert report.bytes_per_step == pytest.approx((3 * 96 + 4) / 3)  # 2 x 32 B reduced + 32 B gathered a step
    assert report.label() == "1 all_gather + 2.33 all_reduce"


def test_the_simulator_sees_a_collective_launched_on_another_stream_without_the_wait(one_rank: None) -> None:
    """Collectives are enqueued on the current stream (NCCL waits for it): the pipelined mode's ping-pong must
    order them like any kernel, and the CUDA simulator checks it as one."""
    sim = SimRuntime()
    first, second = sim.new_stream(), sim.new_stream()
    with sim:
        with sim.stream(first):
            hidden = torch.ones(4) * 2
        with sim.stream(second):
            sim.wait_stream(second, first)
            dist.all_reduce(hidden)  # ordered: fine
        with sim.stream(first):
            hidden = torch.ones(4) * 3
        with pytest.raises(SimulatedRaceError, match=r"c10d::allreduce_ at .* writes on stream .* after aten::mul"):
            with sim.stream(second):
                dist.all_reduce(hidden)


def test_a_ranks_roofline_is_its_share_of_the_cache_plus_the_collectives_payload() -> None:
    step = StepBytes("dynamic", 8, weights=1000.0, kv_read=400.0, kv_written=40.0, state=20.0)
    roof = Roofline(step, bandwidth=1e9)

    class Report:
        bytes_per_step = 100.0

    sharded = sharded_roofline(roof, 2, Report())  # type: ignore[arg-type]
    assert sharded.step is not None
    assert (sharded.step.weights, sharded.step.kv, sharded.step.state) == (1000.0, 220.0, 10.0)  # weights: local
    assert sharded.step.total == 1000.0 + 220.0 + 10.0 + 100.0
    assert sharded_roofline(Roofline(None, 1e9), 2, None).step is None


class Ranks:
    """A stand-in for RankGroup: what every rank would put in."""

    def __init__(self, world: int, values: list[Any]):
        self.world_size, self.values, self.backend = world, values, "gloo"

    def exchange(self, _mine: Any) -> list[Any]:
        return self.values


def test_a_rank_whose_tokens_diverge_is_named_on_every_rank() -> None:
    model = torch.nn.Linear(1, 1)
    model.tp_size = 2  # type: ignore[assignment]
    variant = Variant("tiny-llama-gqa", tp=2)
    tokens = torch.tensor([[5, 6, 7], [8, 9, 10]])
    diverged = tokens.clone()
    diverged[1, 2] = 3
    Sharded(Ranks(2, [tokens, tokens]), model, variant).check_tokens(tokens)  # type: ignore[arg-type]
    with pytest.raises(DecodePerfError, match=r"rank 1's output differs from rank 0 at row 1, position 2 \(3 vs 10\)"):
        Sharded(Ranks(2, [tokens, diverged]), model, variant).check_tokens(tokens)  # type: ignore[arg-type]
    with pytest.raises(DecodePerfError, match="sharded over 1 rank"):
        Sharded(Ranks(2, []), torch.nn.Linear(1, 1), variant)  # type: ignore[arg-type]
    with pytest.raises(DecodePerfError, match="tp=2, but this launch has 4 ranks"):
        Sharded(Ranks(4, []), model, variant)  # type: ignore[arg-type]

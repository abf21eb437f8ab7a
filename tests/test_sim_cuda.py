"""The stream logic under simulated CUDA (``engine/device/sim_cuda.py``): the real policies pass, broken ones fail.

Each mutation is one line of ``StopRun`` done wrong, as it could be written by mistake. On a real
GPU each corrupts tokens only some of the time; the simulator, which tracks every op per simulated
stream with torch's CUDA-sanitizer logic, fails it every time on a CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import torch

from pytest_decodeperf import Runner, Variant
from pytest_decodeperf.engine.decode.caches import CacheSlot, get_cache
from pytest_decodeperf.engine.decode.hidden_syncs import no_padding_check
from pytest_decodeperf.engine.decode.loop import DecodeOutput, generate
from pytest_decodeperf.engine.decode.stream_modes import StopPolicy, StopRun, get_stop_policy
from pytest_decodeperf.engine.device.runtime import DeviceRuntime
from pytest_decodeperf.engine.device.sim_cuda import SimRuntime, SimulatedRaceError

torch.set_num_threads(1)
BATCH, NEW = 3, 12


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner("cpu", rounds=1, warmup=0)


def decode(runner: Runner, policy: StopPolicy, cache: str, runtime: DeviceRuntime | None = None) -> DecodeOutput:
    model = runner.model("tiny-gpt2")
    workload = runner.workload(model, Variant("tiny-gpt2", cache, "baseline", BATCH, NEW))
    slot = CacheSlot(get_cache(cache), model, BATCH, workload.prompts.shape[1] + NEW)
    # As the engine calls it: without GPT-2's padding check, whose hidden host read every forward
    # would order the host after every stream and hide the races below.
    with torch.no_grad(), no_padding_check(model):
        return generate(model, replace(workload, max_new_tokens=NEW), slot, policy, runtime=runtime)


def simulated(runner: Runner, policy: StopPolicy, cache: str = "dynamic") -> DecodeOutput:
    with SimRuntime() as sim:
        out = decode(runner, policy, cache, sim)
        out.tokens = out.tokens.clone()  # the caller reads the tokens on its own stream, as the runner does
        return out


@pytest.mark.parametrize("cache", ["none", "dynamic", "static"])
@pytest.mark.parametrize("stream", ["baseline", "deferred", "pipelined", "nostop"])
def test_every_stream_mode_passes_the_simulator_with_the_baselines_tokens(
    runner: Runner, stream: str, cache: str
) -> None:
    expected = decode(runner, get_stop_policy("baseline"), cache)
    out = simulated(runner, get_stop_policy(stream), cache)
    assert torch.equal(out.tokens, expected.tokens)
    assert out.steps - out.extra_steps == expected.steps
    if stream == "pipelined":
        assert "2 streams" in out.note


def test_a_lag_of_two_gets_a_ring_of_three_flags_and_stays_exact(runner: Runner) -> None:
    lag2 = StopPolicy("lag2", 2, 2, "two streams, the flag read two steps late")
    assert lag2.ring_size() == 3
    out = simulated(runner, lag2)
    expected = decode(runner, get_stop_policy("baseline"), "dynamic")
    assert torch.equal(out.tokens, expected.tokens) and out.extra_steps == 2


# --- mutations: each must fail ---------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant(StopPolicy):
    """A pipelined policy whose run is the given broken ``StopRun`` subclass."""

    run_class: type[StopRun] = StopRun
    ring: int | None = None

    def start(self, device: torch.device, runtime: DeviceRuntime | None = None) -> StopRun:
        assert runtime is not None
        return self.run_class(self, device, runtime)

    def ring_size(self) -> int:
        return self.ring if self.ring is not None else super().ring_size()


class LaunchWithoutWait(StopRun):
    @contextlib.contextmanager
    def launch(self, step: int) -> Iterator[None]:
        stream = self._streams[step % len(self._streams)]
        with self.runtime.stream(stream):  # the bug: no wait_stream on the previous step's stream
            yield
        self._last_stream = stream


class ReadWithoutEventSync(StopRun):
    def should_stop(self, step: int) -> bool:
        read = self.policy.read_slot(step)
        if read < 0:
            return False
        flag = self._flags[self.slot(read)]
        assert flag is not None
        return self.runtime.read_flag(flag)  # the bug (the article's listing): no event synchronize first


class NoFinalJoin(StopRun):
    def finish(self) -> None:
        return None  # the bug: the caller's stream reads the tokens before the side streams are done


def pipelined(run_class: type[StopRun], lag: int = 1, ring: int | None = None) -> Mutant:
    return Mutant("mutant", lag, 2, "a broken pipelined policy", run_class=run_class, ring=ring)


@pytest.mark.parametrize(
    ("run_class", "fragment"),
    [
        (LaunchWithoutWait, "reads on stream"),
        (ReadWithoutEventSync, "a host read at test_sim_cuda.py"),
        (NoFinalJoin, "aten::clone at test_sim_cuda.py"),
    ],
    ids=["launch-without-wait_stream", "pinned-flag-read-without-event-sync", "no-final-join"],
)
def test_a_broken_stream_policy_is_a_simulated_race(runner: Runner, run_class: type[StopRun], fragment: str) -> None:
    with pytest.raises(SimulatedRaceError, match="unsynchronized access") as caught:
        simulated(runner, pipelined(run_class))
    assert fragment in str(caught.value)


def test_a_lag_two_policy_with_a_two_slot_ring_returns_the_wrong_tokens(runner: Runner) -> None:
    """Step i's copy lands in the slot of step i-2 before the host reads it: the host sees a flag two
    steps too new, stops early and trims real tokens."""
    expected = decode(runner, get_stop_policy("baseline"), "dynamic")
    out = simulated(runner, pipelined(StopRun, lag=2, ring=2))
    assert not torch.equal(out.tokens, expected.tokens)
    assert out.tokens.shape[1] < expected.tokens.shape[1]

"""Stop policies (the "stream modes"): when and how the host learns that every row has finished.

The decode loop asks a policy three things per step: which stream to launch the step on
(``launch``), to take the step's all-finished flag (``publish``, called on that stream), and
whether to stop now (``should_stop``). The four modes of the article this tool grew from
(*Optimizing Token Generation in PyTorch Decoder Models*, see README) differ only here:

=========  ===================================================================================
baseline   read the flag of step i right after launching it: a blocking sync every step
deferred   one stream; copy the flag to pinned memory without blocking, read it one step later
           (what transformers' ``DeferredStopCheck`` does)
pipelined  the article's ping-pong: step i runs on stream i % 2, waiting on the other stream; the
           host reads step i-1's flag only after step i is launched
nostop     never read the flag: the upper bound, showing what the stop check itself costs
=========  ===================================================================================

A lagged policy (deferred, pipelined) learns of the stop one step late, so one extra step is
always launched; the loop trims it and counts it. On CPU there are no CUDA streams: the lagged
policies keep their lag (so parity of the trimming is tested everywhere) and say so in ``note``.

Unlike the article's listing, the host waits on a CUDA event recorded after the device-to-host copy
before reading a pinned flag: ``wait_stream`` orders streams on the device but does not block the
host, so reading the pinned tensor without the event can see a stale value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import DecodePerfError, check_choice
from ..device.runtime import DeviceRuntime, runtime_for
from .custom import DECODERS


@dataclass(frozen=True)
class StopPolicy:
    """A stream mode. ``lag`` is how many steps late the flag is read (None: never read)."""

    name: str
    lag: int | None
    streams: int
    description: str

    def supports(self, device: torch.device) -> bool:
        return device.type in ("cpu", "cuda")

    def start(self, device: torch.device, runtime: DeviceRuntime | None = None) -> StopRun:
        """This policy's state for one generation on ``device`` (through ``runtime``, default the device's)."""
        if runtime is None:
            if not self.supports(device):
                raise DecodePerfError(
                    f"stream mode {self.name!r} cannot run on device {device.type!r}; it runs on cpu and cuda"
                )
            runtime = runtime_for(device)
        return StopRun(self, device, runtime)

    def read_slot(self, step: int) -> int:
        """Which step's flag the host reads after launching ``step`` (test doubles override this)."""
        return step - (self.lag or 0)

    def ring_size(self) -> int:
        """Pinned flag slots: the flag of step i must survive until it is read, ``lag`` steps later."""
        return (self.lag or 0) + 1


class StopRun:
    """A policy's state during one generation: streams, pinned flags, events, and counters.

    Every device call goes through ``runtime`` (``device_runtime.py``), so CPU CI can run this
    logic under a simulator with CUDA's visibility rules (``sim_cuda.py``).
    """

    def __init__(self, policy: StopPolicy, device: torch.device, runtime: DeviceRuntime):
        self.policy = policy
        self.device = device
        self.runtime = runtime
        self.async_flags = runtime.has_streams and policy.lag is not None and policy.lag > 0
        self.host_reads = 0
        slots = policy.ring_size()
        self._flags: list[torch.Tensor | None] = [None] * slots
        self._events: list[Any] = []
        self._streams: list[Any] = []
        self._last_stream: Any = None
        if self.async_flags:
            self._flags = [runtime.pinned_flag() for _ in range(slots)]
            self._events = [runtime.new_event() for _ in range(slots)]
        if runtime.has_streams and policy.streams > 1:
            origin = runtime.current_stream()
            self._streams = runtime.side_streams(policy.streams)  # made once per device, not per generation
            for stream in self._streams:
                # Work queued before the loop (prompt copy, cache reset) must land first.
                runtime.wait_stream(stream, origin)

    @property
    def note(self) -> str:
        if self.policy.lag and not self.runtime.has_streams:
            return f"{self.device.type}: lagged stop check without CUDA streams"
        if self._streams:
            return f"{self.device.type}: {len(self._streams)} streams"
        return ""

    def slot(self, step: int) -> int:
        return step % len(self._flags)

    @contextlib.contextmanager
    def launch(self, step: int) -> Iterator[None]:
        """Run the body on this step's stream; a ping-pong stream first waits on the other one."""
        if not self._streams:
            yield
            return
        stream = self._streams[step % len(self._streams)]
        previous = self._streams[(step - 1) % len(self._streams)]
        # Token i needs token i-1 and the cache it wrote: order the streams on the device.
        self.runtime.wait_stream(stream, previous)
        # Every tensor the loop allocates on one stream is read by the next only after this
        # wait, and a freed block is reused by its own stream only two steps later, after a
        # wait on the stream in between: the caching allocator cannot hand out live memory.
        with self.runtime.stream(stream):
            yield
        self._last_stream = stream

    def publish(self, step: int, all_finished: torch.Tensor) -> None:
        """Take step ``step``'s all-finished flag (a 0-dim bool tensor on the device)."""
        if self.policy.lag is None:
            return
        slot = self.slot(step)
        if not self.async_flags:
            self._flags[slot] = all_finished
            return
        flag = self._flags[slot]
        assert flag is not None
        self.runtime.copy_to_host(flag, all_finished)
        self.runtime.record(self._events[slot])  # on the current (this step's) stream, after the copy

    def should_stop(self, step: int) -> bool:
        """After launching ``step``: has the flag the policy reads now said every row finished?"""
        if self.policy.lag is None:
            return False
        read = self.policy.read_slot(step)
        if read < 0:
            return False
        slot = self.slot(read)
        flag = self._flags[slot]
        if flag is None:
            return False
        self.host_reads += 1
        if self.async_flags:
            self.runtime.synchronize_event(self._events[slot])  # the copy has landed in pinned memory
            return self.runtime.read_flag(flag)
        return self.runtime.read_device(flag)

    def finish(self) -> None:
        """Join the side streams back into the current stream before anyone reads the result."""
        if self._streams and self._last_stream is not None:
            self.runtime.wait_stream(self.runtime.current_stream(), self._last_stream)


STOP_POLICIES: dict[str, StopPolicy] = {}


def register_stop_policy(policy: StopPolicy) -> StopPolicy:
    STOP_POLICIES[policy.name] = policy
    return policy


def check_stream_mode(name: str) -> str:
    """Validate a stream-mode name against the engine's policies, the generate() modes and the decoders registered
    with ``@decoder`` (a decoder may not take a built-in's name)."""
    clash = sorted(set(DECODERS) & (set(STOP_POLICIES) | set(HF_MODES)))
    if clash:
        raise DecodePerfError(
            f"decoder {clash[0]!r} ({DECODERS[clash[0]].where}) takes the name of a built-in stream mode; rename it"
        )
    return check_choice("stream mode", name, stream_mode_names())


def get_stop_policy(name: str) -> StopPolicy:
    if name in HF_MODES:
        raise DecodePerfError(f"stream mode {name!r} is run by transformers' generate(), not the decode loop")
    if name in DECODERS:
        raise DecodePerfError(f"stream mode {name!r} is a decoder of yours ({DECODERS[name].where}), not a stop policy")
    return STOP_POLICIES[check_stream_mode(name)]


register_stop_policy(StopPolicy("baseline", 0, 1, "one stream, blocking stop check every step"))
register_stop_policy(StopPolicy("deferred", 1, 1, "one stream, flag copied async and read one step late"))
register_stop_policy(
    StopPolicy("pipelined", 1, 2, "two CUDA streams ping-pong, step i-1's flag read after step i launches")
)
register_stop_policy(StopPolicy("nostop", None, 1, "no stop check: runs every step, the upper bound"))

# Stream modes run by transformers' own generate() rather than by this package's loop.
HF_MODES: dict[str, str] = {
    "hf-generate": "transformers generate(), greedy, its default blocking StopCheck",
    "hf-deferred": "transformers generate() with its DeferredStopCheck forced on (CUDA only)",
    "hf-prompt-lookup": "generate() with prompt lookup: n-grams of the prompt proposed, the model verifies (batch 1)",
    "hf-assisted": "generate() with a draft model proposing tokens, the model verifying them (batch 1; draft=)",
    "hf-serve": "transformers' continuous batching (generate_batch): each row a request, concurrency= at once, a "
    "paged cache (cache='paged')",
}
# The speculative ones: a step is a verify step (several tokens may come of it), their reference is hf-generate.
SPECULATIVE_MODES = ("hf-prompt-lookup", "hf-assisted")


def stream_mode_names() -> list[str]:
    """Every stream mode: the loop's stop policies, generate()'s modes, then the decoders registered so far."""
    return list(STOP_POLICIES) + list(HF_MODES) + [name for name in DECODERS if name not in STOP_POLICIES]

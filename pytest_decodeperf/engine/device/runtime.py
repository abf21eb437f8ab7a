"""The one seam between the engine's stream logic and CUDA: streams, events, pinned flags, async copies.

The stop policies (``stream_modes.py``) and the clock (``measure.py``) never call ``torch.cuda``
themselves; they ask a runtime. Three implement it:

* ``CudaRuntime``: the real thing.
* ``HostRuntime``: the CPU, where kernels run synchronously on the host. It has no streams, so a
  lagged policy keeps its lag (and the loop's trimming is tested) but nothing overlaps.
* ``sim_cuda.SimRuntime``: CUDA's visibility rules on the CPU, for CI: device work is tracked per
  simulated stream with torch's own CUDA sanitizer logic (vector clocks), so a launch without
  ``wait_stream``, a pinned flag read before its copy's event was synchronized, or a missing join
  raises, as a race on a real GPU would corrupt tokens some of the time.

Handles are opaque to the callers: whatever the runtime returns, it takes back.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Protocol

import torch


class DeviceRuntime(Protocol):
    """What the engine needs of a device beyond running kernels."""

    has_streams: bool  # False: one implicit, synchronous stream (the CPU)

    def current_stream(self) -> Any: ...

    def new_stream(self) -> Any: ...

    def side_streams(self, count: int) -> list[Any]:
        """``count`` streams of this runtime's own, made once and reused by every generation."""
        ...

    def stream(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        """Kernels launched inside run on ``stream``."""
        ...

    def wait_stream(self, waiter: Any, other: Any) -> None:
        """Work queued on ``waiter`` from now on starts after everything queued on ``other`` so far."""
        ...

    def new_event(self, timing: bool = False) -> Any: ...

    def record(self, event: Any) -> None:
        """Record ``event`` on the current stream."""
        ...

    def synchronize_event(self, event: Any) -> None:
        """Block the host until ``event`` has happened."""
        ...

    def elapsed_s(self, start: Any, end: Any) -> float: ...

    def synchronize(self) -> None:
        """Block the host until the device is idle."""
        ...

    def pinned_flag(self) -> torch.Tensor:
        """A 0-dim bool in host memory that the device can write asynchronously."""
        ...

    def copy_to_host(self, flag: torch.Tensor, value: torch.Tensor) -> None:
        """Queue ``flag <- value`` on the current stream without blocking the host."""
        ...

    def read_flag(self, flag: torch.Tensor) -> bool:
        """Read a pinned flag on the host. Only correct after an event recorded after its copy was synchronized."""
        ...

    def read_device(self, value: torch.Tensor) -> bool:
        """Read a 0-dim device tensor on the host: blocks until the current stream has produced it."""
        ...

    def requested_bytes(self) -> int | None:
        """Bytes live tensors on the device asked its allocator for, before its rounding (None: no count)."""
        ...


class HostRuntime:
    """The CPU: one synchronous stream, events are timestamps, a flag is the value itself."""

    has_streams = False

    def current_stream(self) -> None:
        return None

    def new_stream(self) -> None:
        return None

    def side_streams(self, count: int) -> list[Any]:
        return []

    def stream(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def wait_stream(self, waiter: Any, other: Any) -> None:
        return None

    def new_event(self, timing: bool = False) -> list[float]:
        return []

    def record(self, event: Any) -> None:
        event[:] = [time.perf_counter()]

    def synchronize_event(self, event: Any) -> None:
        return None

    def elapsed_s(self, start: Any, end: Any) -> float:
        if not start or not end:
            raise RuntimeError("event never recorded")
        return float(end[0] - start[0])

    def synchronize(self) -> None:
        return None

    def pinned_flag(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.bool)

    def copy_to_host(self, flag: torch.Tensor, value: torch.Tensor) -> None:
        flag.copy_(value)

    def read_flag(self, flag: torch.Tensor) -> bool:
        return bool(flag.item())

    def read_device(self, value: torch.Tensor) -> bool:
        return bool(value.item())

    def requested_bytes(self) -> int | None:
        return None  # the host allocator keeps no count


class CudaRuntime:
    """CUDA through torch.cuda: the only place in the stream logic that touches it."""

    has_streams = True

    def __init__(self, device: torch.device):
        self.device = device
        self._side: list[Any] = []

    def current_stream(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def new_stream(self) -> Any:
        return torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]

    def side_streams(self, count: int) -> list[Any]:
        while len(self._side) < count:
            self._side.append(self.new_stream())
        return self._side[:count]

    def stream(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def wait_stream(self, waiter: Any, other: Any) -> None:
        waiter.wait_stream(other)

    def new_event(self, timing: bool = False) -> Any:
        return torch.cuda.Event(enable_timing=timing)  # type: ignore[no-untyped-call]

    def record(self, event: Any) -> None:
        event.record()

    def synchronize_event(self, event: Any) -> None:
        event.synchronize()

    def elapsed_s(self, start: Any, end: Any) -> float:
        return float(start.elapsed_time(end)) / 1e3

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def pinned_flag(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.bool, pin_memory=True)

    def copy_to_host(self, flag: torch.Tensor, value: torch.Tensor) -> None:
        flag.copy_(value, non_blocking=True)

    def read_flag(self, flag: torch.Tensor) -> bool:
        return bool(flag.item())  # host memory: no sync, hence the event before it

    def read_device(self, value: torch.Tensor) -> bool:
        return bool(value.item())

    def requested_bytes(self) -> int | None:
        # The caching allocator's host-side count (no sync). Not memory_allocated: that counts whole
        # blocks, and a block over 1 MiB is rounded to 2 MiB and handed out unsplit within 1 MiB.
        # cudaMallocAsync keeps the key at 0: no count there, rather than a cache that asked for nothing.
        if torch.cuda.get_allocator_backend() != "native":
            return None
        value = torch.cuda.memory_stats(self.device).get("requested_bytes.all.current")
        return int(value) if value is not None else None


_CUDA: dict[torch.device, CudaRuntime] = {}


def runtime_for(device: torch.device) -> DeviceRuntime:
    """The runtime of ``device``: CUDA's for cuda (one per device, so its streams are made once), the host's for cpu."""
    if device.type != "cuda":
        return HostRuntime()
    return _CUDA.setdefault(device, CudaRuntime(device))


def cuda_device_count() -> int:
    """GPUs this process sees (0 without CUDA): how many tensor-parallel ranks one node can hold."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def bind_cuda_device(index: int) -> None:
    """Make GPU ``index`` this process's current device (a tensor-parallel rank's own GPU, ``LOCAL_RANK``)."""
    torch.cuda.set_device(index)

"""CUDA's visibility rules on the CPU: a device runtime for CI that makes stream races raise.

``SimRuntime`` implements ``device_runtime.DeviceRuntime`` with simulated streams and events, and
watches every kernel (every aten op, run on the CPU) with the vector-clock logic of torch's own
CUDA sanitizer (``torch.cuda._sanitizer.EventHandler``): an op on stream B that touches memory
last written or read on stream A raises unless B was ordered after A (``wait_stream``, an event
wait, or a synchronize). On top of that the host is a stream of its own:

* a pinned flag written by an asynchronous copy may be read on the host only after an event
  recorded after the copy has been synchronized (the article's listing skips this);
* ``.item()`` of a device tensor waits for the current stream only, as ``cudaMemcpy`` does;
* memory is identified by address, so a block freed on one stream and reused on another before
  the two are ordered is a conflict too.

The arithmetic still runs eagerly on the CPU, so a race does not corrupt tokens here: it raises
``SimulatedRaceError`` naming the op and both streams, which is stricter than a GPU (where the
same bug corrupts tokens only sometimes). What it cannot see: kernels' timing, the caching
allocator's real reuse pattern (the CPU allocator reuses addresses its own way), and work that
bypasses aten (custom C++ kernels).
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.cuda import _sanitizer as csan

from . import dispatch
from .dispatch import OpWatch

_FACTORY = re.compile(
    r"^(aten::)?(empty|empty_like|empty_strided|full|zeros|ones|rand|randn|arange|tensor|scalar_tensor)"
)
_ids = itertools.count(1)
_WATCHERS = {__file__, dispatch.__file__}  # the simulator's own frames, never where an access was made


class SimulatedRaceError(RuntimeError):
    """A stream race that real CUDA would let corrupt data some of the time."""


def _memory(tensor: torch.Tensor) -> int:
    """The allocation a tensor lives in: its storage, so a view and its base are one block of memory
    (torch's sanitizer uses ``data_ptr()``, which misses a race between two views of one buffer)."""
    storage = tensor.untyped_storage()
    return storage.data_ptr() or id(storage)


class _Arguments(csan.ArgumentHandler):
    """torch's argument handler, for CPU tensors standing in for device memory."""

    def __init__(self, host_ptrs: set[int]) -> None:
        super().__init__()
        self.host_ptrs = host_ptrs

    def _handle_argument(
        self, value: Any, is_write: bool, metadata_only: bool, name: str | None = None, is_output: bool = False
    ) -> None:
        if not isinstance(value, torch.Tensor) or value.device.type != "cpu":
            return
        data_ptr = _memory(value)
        if is_write:
            self.dataptrs_written.add(data_ptr)
        elif not metadata_only:
            self.dataptrs_read.add(data_ptr)
        self.tensor_aliases.setdefault(data_ptr, [])
        if name is not None:
            self.tensor_aliases[data_ptr].append(name)
        if is_output:
            self.outputs.add(data_ptr)


class _Watch(OpWatch):  # type: ignore[no-untyped-call]  # torch's __init_subclass__
    """Every op is a kernel launch on the runtime's current stream."""

    def __init__(self, runtime: SimRuntime) -> None:
        super().__init__()
        self.runtime = runtime

    def op(self, func: torch._ops.OpOverload, args: Sequence[object], kw: dict[str, object]) -> object:
        if func is torch.ops.aten._local_scalar_dense.default:
            tensor = args[0]
            assert isinstance(tensor, torch.Tensor)
            self.runtime._host_read(tensor, func)
            return func(*args, **kw)
        is_factory = bool(_FACTORY.match(func._schema.name))
        handler = _Arguments(self.runtime.host_ptrs)
        handler.parse_inputs(func._schema, tuple(args), kw, is_factory=is_factory)
        out = func(*args, **kw)
        handler.parse_outputs(func._schema, out, is_factory=is_factory)
        self.runtime._launch(
            handler.dataptrs_read - handler.dataptrs_written,
            handler.dataptrs_written,
            handler.outputs,
            func._schema,
            handler.tensor_aliases,
        )
        return out


def _op(access: csan.Access) -> str:
    operator: Any = access.operator
    return str(operator.name if isinstance(getattr(operator, "name", None), str) else operator).split("(")[0]


def _describe(error: csan.SynchronizationError, names: dict[int, str]) -> str:
    """One line: which op on which stream raced with which earlier access, and where."""
    if not isinstance(error, csan.UnsynchronizedAccessError):
        return str(error).strip().splitlines()[-1]
    now, before = error.current_access, error.previous_access

    def where(access: csan.Access) -> str:
        frames = [f for f in access.stack_trace if "/torch/" not in f.filename and f.filename not in _WATCHERS]
        frame = frames[-1] if frames else None
        return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else "?"

    def what(access: csan.Access) -> str:
        verb = "writes" if access.type is csan.AccessType.WRITE else "reads"
        return f"{_op(access)} at {where(access)} {verb} on {names.get(access.stream, f'stream {access.stream}')}"

    return (
        f"unsynchronized access: {what(now)}, after {what(before)}, "
        "with no wait_stream, event wait or synchronize between them"
    )


class SimRuntime:
    """Simulated CUDA streams and events over the CPU (see the module docstring). Use as a context."""

    has_streams = True

    def __init__(self) -> None:
        self.events = csan.EventHandler()
        self.host_ptrs: set[int] = set()
        self.default_stream = self._stream_id()
        self.host = self._stream_id()  # the CPU thread, as a stream that only reads
        self._current = self.default_stream
        self._side: list[int] = []
        self._watch = _Watch(self)

    def __enter__(self) -> SimRuntime:
        self._watch.__enter__()  # type: ignore[no-untyped-call]
        return self

    def __exit__(self, *exc: object) -> None:
        self._watch.__exit__(*exc)  # type: ignore[no-untyped-call]

    def _stream_id(self) -> int:
        stream = next(_ids)
        self.events._handle_stream_creation(stream)
        return stream

    def _raise(self, errors: list[csan.SynchronizationError]) -> None:
        if errors:
            names = {self.host: "the host", self.default_stream: "the default stream"}
            raise SimulatedRaceError(_describe(errors[0], names))

    def _launch(
        self, read: set[int], written: set[int], outputs: set[int], op: Any, aliases: dict[int, list[str]]
    ) -> None:
        self._raise(self.events._handle_kernel_launch(self._current, read, written, outputs, op, aliases))

    def _host_read(self, tensor: torch.Tensor, op: Any) -> None:
        ptr = _memory(tensor)
        if ptr not in self.host_ptrs:
            # cudaMemcpy to pageable host memory: waits for the current stream, then reads.
            self.events._handle_stream_synchronization(self._current)
        read = "a host read"
        self._raise(self.events._handle_kernel_launch(self.host, {ptr}, set(), set(), read, {ptr: ["host read"]}))
        # The host read is done before the host launches anything else: later work on every
        # stream is ordered after it.
        self.events._handle_stream_synchronization(self.host)

    # -- DeviceRuntime ----------------------------------------------------------------------------
    def current_stream(self) -> int:
        return self._current

    def new_stream(self) -> int:
        return self._stream_id()

    def side_streams(self, count: int) -> list[Any]:
        while len(self._side) < count:
            self._side.append(self.new_stream())
        return self._side[:count]

    @contextlib.contextmanager
    def stream(self, stream: Any) -> Iterator[None]:
        previous, self._current = self._current, int(stream)
        try:
            yield
        finally:
            self._current = previous

    def wait_stream(self, waiter: Any, other: Any) -> None:
        event = next(_ids)
        self.events._handle_event_creation(event)
        self.events._handle_event_record(event, int(other))
        self.events._handle_event_wait(event, int(waiter))

    def new_event(self, timing: bool = False) -> int:
        event = next(_ids)
        self.events._handle_event_creation(event)
        return event

    def record(self, event: Any) -> None:
        self.events._handle_event_record(int(event), self._current)

    def synchronize_event(self, event: Any) -> None:
        self.events._handle_event_synchronization(int(event))

    def elapsed_s(self, start: Any, end: Any) -> float:
        return 0.0  # no clock: the simulator checks ordering, not time

    def synchronize(self) -> None:
        self.events._handle_device_synchronization()

    def pinned_flag(self) -> torch.Tensor:
        flag = torch.zeros((), dtype=torch.bool)
        self.host_ptrs.add(_memory(flag))
        return flag

    def copy_to_host(self, flag: torch.Tensor, value: torch.Tensor) -> None:
        flag.copy_(value)  # watched: a write of the flag on the current stream

    def read_flag(self, flag: torch.Tensor) -> bool:
        return bool(flag.item())  # watched: a host read with no implicit wait

    def read_device(self, value: torch.Tensor) -> bool:
        return bool(value.item())  # watched: waits for the current stream first

    def requested_bytes(self) -> int | None:
        return None  # the simulation runs on host memory: no device allocator to count

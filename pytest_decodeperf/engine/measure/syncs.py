"""Count the host-blocking device reads of a decode loop, deterministically, even on CPU.

On CUDA these block the host until the device catches up: ``aten._local_scalar_dense`` (behind
``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``if t:``, ``x in t``, ``range(t)``, ``x[:t]``),
``aten.nonzero``, ``aten.equal``, device-to-host copies (``.tolist()``, ``.cpu()``, ``.to("cpu")``,
``aten._to_copy``/``aten.copy_`` into a host tensor) and pageable host-to-device builds
(``torch.tensor(value, device=dev)``). On CPU they cost nothing, so whether an op is a "device read"
is decided here by the op, never by timing.

What dispatches where on CPU (torch 2.13; ``tests/test_syncs.py`` checks it):

* ``.item()``, ``bool(t)``, ``if t:``, ``int(t)``, ``float(t)``, ``x in t`` (eq + any + read),
  ``range(t)``/``x[:t]``/``x[t]`` (``__index__``): ``aten._local_scalar_dense``. ``aten.is_nonzero``
  is CompositeImplicit and never reaches a dispatch mode; it shows up as ``_local_scalar_dense``.
* ``torch.nonzero``/``x.nonzero()``: ``aten.nonzero``; ``torch.equal``: ``aten.equal``.
* ``.tolist()``, ``.cpu()``, ``.to("cpu")`` of a CPU tensor: *nothing* dispatches. They are seen by a
  companion ``TorchFunctionMode`` (``Tensor.tolist``/``Tensor.cpu``/``Tensor.to``) instead.
* ``torch.tensor(v)``/``torch.as_tensor(v)`` and list indices ``x[:, [-1, 0]]``: ``aten.lift_fresh``
  on a CPU tensor, with or without ``device=``. The ``device=`` argument is only visible at the
  function level, so ``torch.tensor(v, device=<compute device>)`` is counted from there.
* ``.to(torch.float)``, ``.to("cpu", copy=True)``: ``aten._to_copy``; ``dst.copy_(src)``: ``aten.copy_``.

Not visible, or ambiguous, on a CPU counter: a ``copy_``/``_to_copy`` between two CPU tensors (every
``seq[:, i] = tok`` is a ``copy_``), ``.to(device_object)`` whose target equals the compute device
(same as the host on CPU), and copies made inside a kernel (``aten.index`` moving a host index
tensor to the device). On a non-CPU counter those are decided by the tensors' devices.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Literal, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from ..decode.observe import Observer
from ..device import dispatch
from ..device.dispatch import OpWatch

__all__ = ["StepCount", "SyncCounter", "SyncEvent", "SyncObserver"]

Kind = Literal["read", "d2h", "h2d"]

_aten = torch.ops.aten
# Ops that read device memory on the host whatever the tensors' devices (the op type decides).
_READ_OPS: dict[torch._ops.OpOverloadPacket, str] = {
    _aten._local_scalar_dense: "_local_scalar_dense",
    _aten.is_nonzero: "is_nonzero",
    _aten.nonzero: "nonzero",
    _aten.equal: "equal",
}
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_THIS_FILE = os.path.abspath(__file__)
_WATCHERS = {_THIS_FILE, os.path.abspath(dispatch.__file__)}  # the counter's own frames, never a site
_HOST = torch.device("cpu")


@dataclass(frozen=True)
class SyncEvent:
    """One blocking read: the op, where it came from (``file:line``), the step, and whether declared."""

    op: str
    kind: Kind
    site: str
    step: int | None
    declared: bool


class StepCount(NamedTuple):
    hidden: int
    declared: int


def _short(path: str) -> str:
    marker = os.sep + "site-packages" + os.sep
    if marker in path:
        return path.split(marker, 1)[1]
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _site() -> str:
    """``file:line`` of the innermost frame outside torch's package and this module."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_TORCH_DIR) and filename not in _WATCHERS:
            return f"{_short(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>:0"


def _device_of(value: object) -> torch.device | None:
    if value is None:
        return None
    if isinstance(value, torch.device):
        return value
    if isinstance(value, (str, int)):
        return torch.device(value)
    return None


class _FunctionLevel(TorchFunctionMode):
    """Sees the Python-level calls that dispatch nothing on CPU (``tolist``, ``cpu``, ``tensor(device=)``)."""

    def __init__(self, owner: SyncCounter) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(
        self,
        func: Callable[..., object],
        types: Sequence[type],
        args: Sequence[object] = (),
        kwargs: Mapping[str, object] | None = None,
    ) -> object:
        kw = dict(kwargs or {})
        hit = self.owner._classify_function(func, args, kw)
        if hit is None:
            return func(*args, **kw)
        self.owner._suppress += 1  # the aten ops under this call are the same event
        try:
            result = func(*args, **kw)
        finally:
            self.owner._suppress -= 1
        # An empty build (DynamicLayer's ``torch.tensor([], device=d)``) copies no bytes: copy_ returns early.
        if not (hit[1] == "h2d" and isinstance(result, torch.Tensor) and result.numel() == 0):
            first = args[0] if args else None
            flag = isinstance(first, torch.Tensor) and first.dtype == torch.bool and first.numel() == 1
            self.owner._record(hit[0], hit[1], flag)  # a stop flag read by .cpu() or .tolist() is one too
        return result


class SyncCounter(OpWatch):
    """Counts host-blocking device reads, per decode step, attributed to the calling ``file:line``.

    ``device`` is the compute device the loop runs on; copies are counted when they move data
    between it and the host. Use as ``with SyncCounter(device) as counter:``; mark steps with
    ``counter.step(i)`` (a plain call or a ``with``) and the stop policy's own flag read with
    ``with counter.declared():``.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.device = torch.device(device)
        self.events: list[SyncEvent] = []
        # Decides whether a read no region declared is the generation's own stop check (``SyncObserver``).
        self.declare: Callable[[bool], bool] | None = None
        self._step: int | None = None
        self._last_step = -1
        self._declared = 0
        self._suppress = 0
        self._function_level = _FunctionLevel(self)

    # -- context management ----------------------------------------------------------------
    def __enter__(self) -> SyncCounter:
        self._function_level.__enter__()  # type: ignore[no-untyped-call]  # torch leaves these untyped
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc_val, exc_tb)  # type: ignore[no-untyped-call]
        finally:
            self._function_level.__exit__(exc_type, exc_val, exc_tb)  # type: ignore[no-untyped-call]

    @contextmanager
    def declared(self) -> Iterator[None]:
        """Reads in this region are the loop's declared ones (the stop-flag read), not hidden."""
        self._declared += 1
        try:
            yield
        finally:
            self._declared -= 1

    def outside(self) -> None:
        """What follows belongs to no step (after the loop)."""
        self._step = None

    def step(self, index: int) -> _StepScope:
        """Attribute what follows to decode step ``index`` (prefill is step 0)."""
        return _StepScope(self, index)

    # -- classification ----------------------------------------------------------------------
    def _on_device(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and t.device == self.device

    def _classify_function(
        self, func: Callable[..., object], args: Sequence[object], kw: Mapping[str, object]
    ) -> tuple[str, Kind] | None:
        name = getattr(func, "__name__", "")
        if name in ("tensor", "as_tensor") and func in (torch.tensor, torch.as_tensor):
            target = _device_of(kw.get("device"))
            if target is not None and target == self.device:
                return f"{name}(device=)", "h2d"
            return None
        if not args or not self._on_device(args[0]):
            return None
        if name == "tolist":
            return "tolist", "d2h"
        if name == "numpy":
            return "numpy", "d2h"
        if name == "cpu":
            return "cpu", "d2h"
        if name == "to":
            target = _device_of(kw.get("device"))
            if target is None and len(args) > 1:
                target = _device_of(args[1])
            if target is None or target != _HOST:
                return None
            # On a CPU counter only an explicit "cpu" string says "to the host"; a device object
            # equal to the (CPU) compute device is the ordinary "keep it where it is" idiom.
            spelled = kw.get("device", args[1] if len(args) > 1 else None)
            if self.device == _HOST and not isinstance(spelled, str):
                return None
            return "to(cpu)", "d2h"
        return None

    def _classify_aten(
        self, func: torch._ops.OpOverload, args: Sequence[object], kwargs: Mapping[str, object]
    ) -> tuple[str, Kind] | None:
        read = _READ_OPS.get(func.overloadpacket)
        if read is not None:
            return read, "read"
        if self.device == _HOST:
            return None  # host<->device copies are indistinguishable from host<->host ones on CPU
        packet = func.overloadpacket
        if packet is _aten._to_copy and args and self._on_device(args[0]):
            if _device_of(kwargs.get("device")) == _HOST:
                return "_to_copy", "d2h"
        elif packet is _aten.copy_ and len(args) > 1:
            dst, src = args[0], args[1]
            if isinstance(dst, torch.Tensor) and dst.device == _HOST and self._on_device(src):
                return "copy_", "d2h"
            if self._on_device(dst) and isinstance(src, torch.Tensor) and src.device == _HOST:
                return "copy_(h2d)", "h2d"
        elif packet is _aten.lift_fresh and args and self._on_device(args[0]):
            return "lift_fresh", "h2d"
        return None

    def _record(self, op: str, kind: Kind, flag: bool = False) -> None:
        """One read; ``flag``: of a one-element bool tensor (what a stop check reads)."""
        declared = self._declared > 0 or (self.declare is not None and self.declare(flag))
        self.events.append(SyncEvent(op, kind, _site(), self._step, declared))

    def op(self, func: torch._ops.OpOverload, args: Sequence[object], kw: dict[str, object]) -> object:
        if self._suppress == 0:
            hit = self._classify_aten(func, args, kw)
            if hit is not None:
                first = args[0] if args else None
                flag = isinstance(first, torch.Tensor) and first.dtype == torch.bool and first.numel() == 1
                self._record(hit[0], hit[1], flag)
        return func(*args, **kw)

    # -- reports -------------------------------------------------------------------------------
    def hidden(self) -> list[SyncEvent]:
        return [e for e in self.events if not e.declared]

    def per_step(self) -> list[StepCount]:
        """(hidden, declared) counts for steps 0..last seen; events outside any step are left out."""
        last = max([self._last_step, *(e.step for e in self.events if e.step is not None)])
        hidden = [0] * (last + 1)
        declared = [0] * (last + 1)
        for e in self.events:
            if e.step is None:
                continue
            if e.declared:
                declared[e.step] += 1
            else:
                hidden[e.step] += 1
        return [StepCount(h, d) for h, d in zip(hidden, declared, strict=True)]

    def sites(self, step: int | None = None) -> collections.Counter[str]:
        """``"file:line op"`` -> count, for hidden reads (of one step if given)."""
        return collections.Counter(
            f"{e.site} {e.op}" for e in self.events if not e.declared and (step is None or e.step == step)
        )

    def over_budget(self, max_per_step: int) -> list[str]:
        """One message per step whose hidden reads exceed ``max_per_step``, naming each ``file:line``."""
        messages = []
        for index, count in enumerate(self.per_step()):
            if count.hidden > max_per_step:
                where = ", ".join(f"{site} x{n}" for site, n in sorted(self.sites(index).items()))
                messages.append(
                    f"step {index}: {count.hidden} hidden blocking read(s) > budget {max_per_step}: {where}"
                )
        return messages

    def summary(self, budget: int | None = None) -> str:
        """A small text report: per-step counts and the hidden-read sites."""
        counts = self.per_step()
        lines = [f"SyncCounter(device={self.device}): {len(self.events)} blocking read(s), {len(counts)} step(s)"]
        for index, count in enumerate(counts):
            flag = " OVER" if budget is not None and count.hidden > budget else ""
            lines.append(f"  step {index:3d}: hidden={count.hidden} declared={count.declared}{flag}")
        outside = sum(1 for e in self.events if e.step is None)
        if outside:
            lines.append(f"  outside steps: {outside}")
        for site, n in self.sites().most_common():
            lines.append(f"  {n:5d}  {site}")
        if budget is not None:
            over = self.over_budget(budget)
            lines.append(f"budget {budget}/step: " + ("ok" if not over else f"{len(over)} step(s) over"))
        return "\n".join(lines)


class _StepScope:
    """Returned by ``SyncCounter.step``: takes effect at once; as a ``with`` it restores on exit."""

    def __init__(self, counter: SyncCounter, index: int) -> None:
        self.counter = counter
        self.previous = counter._step
        counter._step = index
        counter._last_step = max(counter._last_step, index)

    def __enter__(self) -> _StepScope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.counter._step = self.previous


class SyncObserver(Observer):
    """A generation's steps and stop check, told to ``counter``.

    The plugin's loop declares its stop check itself (``stop_check``). A generation observed through forward hooks
    cannot: for it, ``stop_reads`` (a decoder of yours: ``@decoder(stop_reads=...)``) says how many reads a step
    of a one-element bool tensor, outside the model's forward, are its stop check; every other read is hidden.
    None: no read of it is declared (transformers' generate(): its stop check counts as hidden, reported).
    """

    def __init__(self, counter: SyncCounter, stop_reads: int | None = None):
        self.counter = counter
        self.stop_reads = stop_reads
        self.in_forward = False
        self._declared_in_step = 0
        if stop_reads is not None:
            counter.declare = self._is_stop_check

    def _is_stop_check(self, flag: bool) -> bool:
        if self.stop_reads is None or self.in_forward or not flag or self._declared_in_step >= self.stop_reads:
            return False
        self._declared_in_step += 1
        return True

    def begin_step(self, step: int) -> None:
        self.counter.step(step)
        self.in_forward = self.stop_reads is not None  # hook-observed: begin_step is the forward's pre-hook
        self._declared_in_step = 0

    def launched(self, step: int) -> None:
        self.in_forward = False

    def stop_check(self) -> contextlib.AbstractContextManager[None]:
        return self.counter.declared()

    def end(self) -> None:
        self.counter.outside()

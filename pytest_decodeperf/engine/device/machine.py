"""What machine a run measured: versions and the device, for reports and asv's machine.json."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import time

import torch
import transformers

from ...records import MachineInfo


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _gpu_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def drift_canary_ms(device: torch.device | str, threads: int | None = None, repeats: int = 7) -> float:
    """Median milliseconds of a fixed small matmul loop on ``device``: how fast the machine is right now.

    Two runs compared through history see two machine states; on a shared VM they differ by tens of
    percent. Timed at a run's start and end, this bounds the machine's move between two runs, and the
    history comparison judges each timed metric against it (``history/compare.py``: ``Drift``).
    """
    dev = torch.device(device)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        # CPU: 128 wide, the host's speed; CUDA: 2048 wide, so the GPU's clocks, not launch overhead, dominate
        size = 2048 if dev.type == "cuda" else 128
        weight = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(dev) / size**0.5
        times = []
        with torch.inference_mode():
            for _ in range(repeats + 1):  # the first round warms up
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                start = time.perf_counter()
                x = weight
                for _ in range(200):
                    x = torch.tanh(x @ weight)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times.append(1e3 * (time.perf_counter() - start))
        return float(statistics.median(times[1:]))
    finally:
        torch.set_num_threads(before)


def machine_info(
    device: torch.device | str,
    threads: int | None = None,
    bandwidth_gb_per_s: float | None = None,
    canary_ms: float | None = None,
) -> MachineInfo:
    """``threads``: the count measurements pin (default: torch's current one)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    return MachineInfo(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=platform.python_version(),
        cpu=_cpu_name(),
        num_cpu=os.cpu_count() or 0,
        ram_bytes=_ram_bytes(),
        threads=threads if threads is not None else torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        cuda=torch.version.cuda,
        device=dev.type,
        gpu_name=torch.cuda.get_device_name(dev) if cuda else None,
        gpu_driver=_gpu_driver() if cuda else None,
        bandwidth_gb_per_s=bandwidth_gb_per_s,
        canary_ms=canary_ms,
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when available, else cpu; ``cuda`` without CUDA is an error."""
    from ...errors import DecodePerfError, check_choice

    check_choice("device", name, ("auto", "cpu", "cuda"))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DecodePerfError(
            f"device 'cuda' asked for, but this torch ({torch.__version__}) sees no CUDA device; "
            "use --decodeperf-device=cpu or auto"
        )
    return torch.device(name)

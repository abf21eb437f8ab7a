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


GOVERNOR = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
# What nvidia-smi is asked, in its own names, and the keys of ``MachineInfo.gpu_clocks_mhz`` the clocks become.
GPU_QUERY = (
    "uuid",
    "driver_version",
    "clocks.sm",
    "clocks.mem",
    "clocks.max.sm",
    "clocks.max.mem",
    "clocks.applications.graphics",
    "clocks.applications.memory",
)
CLOCK_KEYS = ("sm", "mem", "max_sm", "max_mem", "app_sm", "app_mem")


def cpu_governor(path: str = GOVERNOR) -> str | None:
    """cpufreq's governor of CPU 0 (``performance``, ``powersave``, ...): None where the kernel does not say (VMs)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def parse_gpu_query(text: str, uuid: str | None = None) -> tuple[str | None, dict[str, int] | None]:
    """nvidia-smi's ``--query-gpu=GPU_QUERY --format=csv,noheader,nounits`` answer: (driver, clocks in MHz).

    The row of the GPU with ``uuid`` (torch's, with or without nvidia-smi's ``GPU-``), else the only row; with
    several GPUs and none matching, the driver (one per machine) but no clocks. A clock nvidia-smi cannot read
    (``[N/A]``, ``[Not Supported]``) is left out; none readable is None.
    """
    rows = [[cell.strip() for cell in line.split(",")] for line in text.strip().splitlines() if line.strip()]
    rows = [row for row in rows if len(row) == len(GPU_QUERY)]
    if not rows:
        return None, None
    want = str(uuid).removeprefix("GPU-") if uuid else None
    mine = [row for row in rows if want and row[0].removeprefix("GPU-") == want]
    row = mine[0] if mine else rows[0] if len(rows) == 1 else None
    driver = (row or rows[0])[1] or None
    if row is None:
        return driver, None
    clocks = {key: int(float(cell)) for key, cell in zip(CLOCK_KEYS, row[2:], strict=True) if _number(cell)}
    return driver, clocks or None


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _nvidia_smi(dev: torch.device) -> tuple[str | None, dict[str, int] | None]:
    """The driver and this GPU's clocks, where nvidia-smi runs (None, None where it does not)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(GPU_QUERY)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        uuid = getattr(torch.cuda.get_device_properties(dev), "uuid", None)
    except (OSError, subprocess.TimeoutExpired, RuntimeError):
        return None, None
    return parse_gpu_query(out.stdout, str(uuid) if uuid else None) if out.returncode == 0 else (None, None)


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
    """``threads``: the count measurements pin (default: torch's current one). Its fingerprint (``fingerprint.py``)
    is what a comparison of two runs checks before it blames the code."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    driver, clocks = _nvidia_smi(dev) if cuda else (None, None)
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
        gpu_driver=driver,
        gpu_clocks_mhz=clocks,
        cpu_governor=cpu_governor(),
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

"""What machine a run measured: versions and the device, for reports and asv's machine.json."""

from __future__ import annotations

import os
import platform
import socket
import subprocess

import torch
import transformers

from ..records import MachineInfo


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


def machine_info(device: torch.device | str) -> MachineInfo:
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    return MachineInfo(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=platform.python_version(),
        cpu=_cpu_name(),
        num_cpu=os.cpu_count() or 0,
        ram_bytes=_ram_bytes(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        cuda=torch.version.cuda,
        device=dev.type,
        gpu_name=torch.cuda.get_device_name(dev) if cuda else None,
        gpu_driver=_gpu_driver() if cuda else None,
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when available, else cpu; ``cuda`` without CUDA is an error."""
    from ..errors import DecodePerfError, check_choice

    check_choice("device", name, ("auto", "cpu", "cuda"))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DecodePerfError(
            f"device 'cuda' asked for, but this torch ({torch.__version__}) sees no CUDA device; "
            "use --decodeperf-device=cpu or auto"
        )
    return torch.device(name)

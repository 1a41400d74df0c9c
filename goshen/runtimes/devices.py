"""Which accelerator this process computes on."""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    name: str
    memory_bytes: int | None


def detect_device() -> Device:
    """The first CUDA device when PyTorch sees one, else the CPU."""
    import torch  # heavy; only processes that compute import it

    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        return Device("cuda", properties.name, properties.total_memory)
    return cpu_device()


def cpu_device() -> Device:
    """The host CPU, also where CUDA is present (for work pinned to the CPU)."""
    return Device("cpu", _cpu_name(), _physical_memory())


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return f"cpu: {line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass  # not Linux; fall back to what platform knows
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


class PeakMemory:
    """Peak memory over a block: CUDA's allocator peak on a GPU, else the process's peak RSS.

    RSS is a high-water mark for the process's whole life, so on the CPU it reads as "at most".
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        self.bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.kind == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *_: object) -> None:
        if self.device.kind == "cuda":
            import torch

            self.bytes = int(torch.cuda.max_memory_allocated())
        else:
            # ru_maxrss is in KiB on Linux.
            self.bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

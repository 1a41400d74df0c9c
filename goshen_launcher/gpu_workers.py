"""`goshen worker --gpus all` (or `--gpus 0,1`): one worker process per GPU, each pinned to its
device with CUDA_VISIBLE_DEVICES, supervised together and stopped together.

GPUs are found without importing PyTorch here (the parent only supervises): CUDA_VISIBLE_DEVICES
when this process is already restricted, else `nvidia-smi -L`. Each worker is a plain
`goshen worker` in its own process group; its output goes to GOSHEN_HOME/logs/worker-gpuN.log,
and it serves its metrics on GOSHEN_WORKER_METRICS_PORT plus its position in the list (when set).
One that exits stops the others, and the command fails, so whatever runs it (systemd, the
orchestrator) restarts the whole set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from goshen.config import Settings
from goshen.errors import GoshenError
from goshen_launcher.supervisor import PlatformError, Service, Supervisor, log_tail

NVIDIA_SMI_TIMEOUT_SECONDS = 30
_GPU_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


class NoGpuError(GoshenError):
    """`--gpus` names GPUs this host does not have."""


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them: its own restriction
    when set, else every GPU `nvidia-smi -L` lists; none without the NVIDIA driver."""
    restricted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if restricted is not None:
        return [gpu.strip() for gpu in restricted.split(",") if gpu.strip() not in ("", "-1")]
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return []
    try:
        listed = subprocess.run(
            [nvidia_smi, "-L"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listed.returncode != 0:
        return []
    return _GPU_LINE.findall(listed.stdout)


def choose_gpus(spec: str, visible: Sequence[str]) -> list[str]:
    """The GPUs `--gpus SPEC` asks for: `all` (every visible one) or a comma-separated list of
    visible ones. NoGpuError, saying what is visible, when none is or one is not."""
    if not visible:
        raise NoGpuError(
            f"--gpus {spec}: no GPU is visible (nvidia-smi -L lists none, or "
            "CUDA_VISIBLE_DEVICES hides them all); run `goshen worker` without --gpus for one "
            "worker on the CPU"
        )
    if spec.strip().lower() == "all":
        return list(visible)
    wanted = [gpu.strip() for gpu in spec.split(",") if gpu.strip()]
    if not wanted:
        raise NoGpuError("--gpus: name GPUs, as `all` or indexes like 0,1")
    missing = [gpu for gpu in wanted if gpu not in visible]
    if missing:
        raise NoGpuError(
            f"--gpus {spec}: no GPU {', '.join(missing)} here; visible: {', '.join(visible)}"
        )
    return list(dict.fromkeys(wanted))  # each GPU once, in the order asked


def metrics_ports(first: int, workers: int) -> list[int]:
    """Each worker's GOSHEN_WORKER_METRICS_PORT: `first` plus its position in the GPU list, or
    0 (none served) for all when `first` is 0."""
    if not first:
        return [0] * workers
    last = first + workers - 1
    if last > 65535:
        raise GoshenError(
            f"GOSHEN_WORKER_METRICS_PORT={first}: {workers} workers need ports {first} to "
            f"{last}, past 65535; set a lower port"
        )
    return list(range(first, first + workers))


def run_gpu_workers(
    settings: Settings,
    spec: str,
    detect: Callable[[], list[str]] = visible_gpus,
    worker_argv: Sequence[str] = (sys.executable, "-m", "goshen_launcher.cli", "worker"),
) -> int:
    """Run one worker per GPU `spec` asks for until a stop signal (0) or one exits (1). `detect`
    and `worker_argv` are what tests replace: no GPU there, and a stand-in worker."""
    gpus = choose_gpus(spec, detect())
    ports = metrics_ports(settings.worker_metrics_port, len(gpus))
    supervisor = Supervisor(
        env=dict(os.environ),
        cwd=Path.cwd(),
        logs=settings.home_dir / "logs",
        grace_seconds=settings.shutdown_grace_seconds,
    )
    with supervisor.handling_signals():
        try:
            for gpu, port in zip(gpus, ports, strict=True):
                env = {"CUDA_VISIBLE_DEVICES": gpu, "GOSHEN_WORKER_METRICS_PORT": str(port)}
                running = supervisor.start(Service(f"worker-gpu{gpu}", tuple(worker_argv), env))
                print(f"worker on GPU {gpu}: pid {running.process.pid}, log {running.log_path}")
            supervisor.wait_while_running()
        except PlatformError as exc:
            print(f"goshen: {exc}", file=sys.stderr)
            for log_path in exc.logs:
                for line in log_tail(log_path):
                    print(f"  {line}", file=sys.stderr)
            return 1
        finally:
            supervisor.stop_all()
    return 0

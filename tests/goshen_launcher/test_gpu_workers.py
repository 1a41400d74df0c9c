"""`goshen worker --gpus`: which GPUs it finds and takes, and the workers it runs on them.

This machine has no GPU: the GPU lists are injected, either as a list (choose_gpus) or as a
fake `nvidia-smi` first on PATH that prints what the real one prints for two GPUs. The workers
started on them are the real `goshen worker` processes; without CUDA they compute on the CPU,
each still pinned (CUDA_VISIBLE_DEVICES) to the GPU it was given, each serving its metrics on a
port of its own.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db.models import Worker, WorkerStatus
from goshen.errors import GoshenError
from goshen_launcher.gpu_workers import NoGpuError, choose_gpus, metrics_ports, visible_gpus

TWO_GPUS = (
    "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)\n"
    "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-66666666-7777-8888-9999-000000000000)\n"
)


def _fake_nvidia_smi(tmp_path: Path, listing: str) -> str:
    """A folder with an `nvidia-smi` that prints `listing` for -L; PATH with it first."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{listing}'\n")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_all_takes_every_visible_gpu_and_a_list_takes_those_named() -> None:
    assert choose_gpus("all", ["0", "1"]) == ["0", "1"]
    assert choose_gpus("1", ["0", "1"]) == ["1"]
    assert choose_gpus(" 1,0,1 ", ["0", "1"]) == ["1", "0"]


def test_gpus_that_are_not_visible_are_refused_naming_those_that_are() -> None:
    with pytest.raises(NoGpuError, match="no GPU 2 here; visible: 0, 1"):
        choose_gpus("0,2", ["0", "1"])
    with pytest.raises(NoGpuError, match="no GPU is visible"):
        choose_gpus("all", [])


def test_gpus_come_from_nvidia_smi_or_this_process_restriction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, TWO_GPUS))
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert visible_gpus() == ["3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def _goshen_env(settings: Settings, path: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": path,
        "GOSHEN_DATABASE_URL": settings.resolved_database_url,
        "GOSHEN_HOME": str(settings.home_dir),
        "GOSHEN_LOG_LEVEL": "WARNING",
        "GOSHEN_WORKER_HEARTBEAT_SECONDS": "0.5",
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def test_no_gpu_visible_is_one_line_and_exit_code_2(settings: Settings, tmp_path: Path) -> None:
    env = _goshen_env(settings, _fake_nvidia_smi(tmp_path, ""))
    result = subprocess.run(
        [sys.executable, "-m", "goshen_launcher.cli", "worker", "--gpus", "all"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "goshen: --gpus all: no GPU is visible (nvidia-smi -L lists none, or "
        "CUDA_VISIBLE_DEVICES hides them all); run `goshen worker` without --gpus for one "
        "worker on the CPU"
    ]


def _workers(sessions: sessionmaker[Session]) -> list[Worker]:
    with sessions() as session:
        return list(session.scalars(select(Worker).order_by(Worker.pid)))


def _pinned_to(pid: int) -> str | None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"CUDA_VISIBLE_DEVICES="):
            return entry.split(b"=", 1)[1].decode()
    return None


def test_one_worker_per_gpu_each_pinned_all_stopped_on_sigterm(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    env = _goshen_env(settings, _fake_nvidia_smi(tmp_path, TWO_GPUS))
    parent = subprocess.Popen(
        [sys.executable, "-m", "goshen_launcher.cli", "worker", "--gpus", "all"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(workers := _workers(sessions)) < 2:
            assert parent.poll() is None, parent.communicate()[0]
            assert time.monotonic() < deadline, "two workers did not register"
            time.sleep(0.2)
        assert sorted(_pinned_to(worker.pid) or "" for worker in workers) == ["0", "1"]
        assert all(worker.device in ("cuda:0", "cuda:1", "cpu") for worker in workers)
        assert all((worker.memory_used_bytes or 0) > 0 for worker in workers)

        parent.send_signal(signal.SIGTERM)
        output = parent.communicate(timeout=settings.shutdown_grace_seconds + 30)[0]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 0, output
    assert "worker on GPU 0" in output and "worker on GPU 1" in output, output
    assert [worker.status for worker in _workers(sessions)] == [WorkerStatus.stopped] * 2
    for worker in workers:
        assert not Path(f"/proc/{worker.pid}").exists() or _is_zombie(worker.pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_each_gpu_worker_serves_metrics_on_the_port_plus_its_position() -> None:
    assert metrics_ports(9400, 3) == [9400, 9401, 9402]
    assert metrics_ports(0, 2) == [0, 0]  # none served
    with pytest.raises(GoshenError, match="ports 65535 to 65536, past 65535"):
        metrics_ports(65535, 2)


def _two_free_ports() -> int:
    """A port that is free, and the one after it."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two consecutive free ports")


@pytest.mark.parametrize("backend", ["postgresql"])
def test_gpu_workers_are_scraped_one_port_each(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    port = _two_free_ports()
    env = _goshen_env(settings, _fake_nvidia_smi(tmp_path, TWO_GPUS))
    env["GOSHEN_WORKER_METRICS_PORT"] = str(port)
    parent = subprocess.Popen(
        [sys.executable, "-m", "goshen_launcher.cli", "worker", "--gpus", "all"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        served: dict[int, str] = {}
        deadline = time.monotonic() + 120
        while len(served) < 2:
            assert parent.poll() is None, parent.communicate()[0]
            assert time.monotonic() < deadline, f"metrics answered on {sorted(served)} only"
            for each in (port, port + 1):
                try:
                    text = httpx.get(f"http://127.0.0.1:{each}/metrics", timeout=2).text
                except httpx.TransportError:
                    continue
                served[each] = re.findall(r'goshen_worker_info\{.*worker="([^"]+)"', text)[0]
            time.sleep(0.2)
        assert set(served.values()) == {worker.id for worker in _workers(sessions)}
        parent.send_signal(signal.SIGTERM)
        parent.communicate(timeout=settings.shutdown_grace_seconds + 30)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()

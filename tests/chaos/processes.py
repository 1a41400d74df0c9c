"""The platform as separate processes: `goshen api`, `goshen worker` and `goshen webhooks`, each a
real subprocess of the installed CLI on one database, each logging to a file of its own.

Every process started here is tracked and, when the block ends however it ends, woken (SIGCONT:
one may be frozen), asked to stop (SIGTERM) and killed if it has not stopped in time: a failing
run leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen.db.models import Worker

STOP_SECONDS = 20


@dataclass
class Process:
    """One platform process: its role, its Popen and its log."""

    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Platform:
    """The processes of one run, sharing `env` (GOSHEN_* settings) and a folder for logs."""

    env: dict[str, str]
    folder: Path
    processes: list[Process] = field(default_factory=list)
    api_urls: list[str] = field(default_factory=list)

    def start(self, role: str, *args: str, **extra: str) -> Process:
        """`goshen <role> <args>` with the run's settings and `extra` GOSHEN_* variables."""
        number = sum(1 for process in self.processes if process.role == role)
        log = self.folder / f"{role}-{number}.log"
        with log.open("wb") as output:
            popen = subprocess.Popen(
                [sys.executable, "-m", "goshen_launcher.cli", role, *args],
                env={**self.env, **extra},
                cwd=self.folder,  # no .env of a developer's checkout is read
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(role, popen, log)
        self.processes.append(process)
        return process

    def start_api(self, port: int) -> Process:
        process = self.start("api", GOSHEN_API_PORT=str(port))
        self.api_urls.append(f"http://127.0.0.1:{port}")
        return process

    def workers(self) -> list[Process]:
        return [p for p in self.processes if p.role == "worker" and p.alive()]

    def wait_until_apis_answer(self, timeout: float = 120) -> None:
        apis = [p for p in self.processes if p.role == "api"]
        deadline = time.monotonic() + timeout
        for url, process in zip(self.api_urls, apis, strict=True):
            while True:
                assert process.alive(), f"{url} exited: {process.tail()}"
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{url} never answered: {process.tail()}"
                time.sleep(0.2)

    def wait_until_registered(
        self, sessions: sessionmaker[Session], workers: list[Process], timeout: float = 120
    ) -> dict[int, str]:
        """Until every one of `workers` is in the workers table; their worker ids by pid."""
        deadline = time.monotonic() + timeout
        while True:
            with sessions() as session:
                rows = session.execute(select(Worker.pid, Worker.id)).all()
            ids = {pid: worker_id for pid, worker_id in rows}
            if all(worker.pid in ids for worker in workers):
                return {worker.pid: ids[worker.pid] for worker in workers}
            for worker in workers:
                assert worker.alive(), f"worker {worker.pid} exited: {worker.tail()}"
            assert time.monotonic() < deadline, "workers did not register: " + "".join(
                worker.tail(800) for worker in workers
            )
            time.sleep(0.2)

    def stop(self) -> dict[str, int | None]:
        """Stop every process (SIGTERM, then SIGKILL past STOP_SECONDS); exit codes by log name."""
        for process in self.processes:
            process.signal(signal.SIGCONT)
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        codes: dict[str, int | None] = {}
        for process in self.processes:
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=10)
            codes[process.log.name] = process.popen.returncode
        return codes

    def kill_all(self) -> None:
        for process in self.processes:
            if process.alive():
                process.signal(signal.SIGCONT)
                process.popen.kill()
            with suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=10)


@contextmanager
def running_platform(env: dict[str, str], folder: Path) -> Iterator[Platform]:
    """A Platform for the block; whatever is still running at its end is killed."""
    platform = Platform(env, folder)
    try:
        yield platform
    finally:
        platform.kill_all()

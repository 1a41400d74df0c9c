"""`goshen worker`: registers itself, heartbeats, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sqlalchemy import select

from goshen.config import Settings
from goshen.db.models import Worker, WorkerStatus


def _workers(sessions) -> list[Worker]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return list(session.scalars(select(Worker)))


def test_worker_heartbeats_and_stops_on_sigterm(settings: Settings, sessions) -> None:  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "GOSHEN_HOME": str(settings.home_dir),
        "GOSHEN_DATABASE_URL": settings.resolved_database_url,
        "GOSHEN_WORKER_HEARTBEAT_SECONDS": "0.2",
    }
    worker = subprocess.Popen([sys.executable, "-m", "goshen.cli", "worker"], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (rows := _workers(sessions)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(rows) == 1, "the worker never registered"
        registered = rows[0]
        assert registered.pid == worker.pid and registered.device_name.startswith("cpu")
        time.sleep(1)
        assert _workers(sessions)[0].heartbeat_at > registered.heartbeat_at
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    assert _workers(sessions)[0].status == WorkerStatus.stopped

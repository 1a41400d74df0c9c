"""`goshen worker`: a process that runs jobs on this host's GPU (or CPU).

It registers in the workers table and heartbeats there, so admins see it and the queue can tell
live workers from dead ones; on SIGTERM or Ctrl-C it marks itself stopped and exits.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import Worker, WorkerStatus, utcnow
from goshen.runtimes.devices import detect_device

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def register_worker(factory: sessionmaker[Session], worker_id: str) -> Worker:
    device = detect_device()
    with session_scope(factory) as session:
        worker = Worker(
            id=worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            device_name=device.name,
            device_memory_bytes=device.memory_bytes,
            loaded_models=[],
            status=WorkerStatus.idle,
        )
        session.add(worker)
    return worker


def heartbeat(factory: sessionmaker[Session], worker_id: str, status: WorkerStatus) -> None:
    with session_scope(factory) as session:
        session.execute(
            update(Worker)
            .where(Worker.id == worker_id)
            .values(heartbeat_at=utcnow(), status=status)
        )


def run_worker(settings: Settings, stop: threading.Event | None = None) -> int:
    """Register, heartbeat until told to stop, then mark this worker stopped."""
    stop = stop or _stop_on_signals()
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate.upgrade(engine)
        factory = make_sessionmaker(engine)
        worker = register_worker(factory, new_worker_id())
        log.info("worker %s ready on %s", worker.id, worker.device_name)
        while not stop.wait(settings.worker_heartbeat_seconds):
            heartbeat(factory, worker.id, WorkerStatus.idle)
        heartbeat(factory, worker.id, WorkerStatus.stopped)
        log.info("worker %s stopped", worker.id)
    finally:
        engine.dispose()
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop

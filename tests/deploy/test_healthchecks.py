"""The health checks of the processes without a port, run as written in the deploy files.

A worker is healthy while its row in `workers` has a fresh heartbeat; the webhook dispatcher while
it reaches its database. Each check's command is taken from deploy/docker-compose.yml or the
Kubernetes manifests and run here, with this interpreter for the image's `python`, against a
migrated PostgreSQL database (the production backend: the queries are PostgreSQL's).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update

from goshen.db import make_engine, make_sessionmaker, session_scope
from goshen.db.models.base import utcnow
from goshen.db.models.workers import Worker, WorkerStatus

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
WORKERS_K8S = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "workers.yaml").read_text()))
WEBHOOKS_K8S = yaml.safe_load((DEPLOY / "kubernetes" / "webhooks.yaml").read_text())


def compose_check(service: str) -> list[str]:
    test = COMPOSE["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [str(part) for part in test[1:]]


def k8s_probe(resource: dict[str, Any], probe: str) -> list[str]:
    (container,) = resource["spec"]["template"]["spec"]["containers"]
    return [str(part) for part in container[probe]["exec"]["command"]]


WORKER_CHECKS = {
    "compose worker": compose_check("worker"),
    "compose worker-cpu": compose_check("worker-cpu"),
    **{
        f"{r['metadata']['name']} {probe}": k8s_probe(r, probe)
        for r in WORKERS_K8S
        if r["kind"] == "Deployment"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    },
}
DATABASE_CHECKS = {
    "compose webhooks": compose_check("webhooks"),
    "goshen-webhooks livenessProbe": k8s_probe(WEBHOOKS_K8S, "livenessProbe"),
}


def run_check(argv: list[str], database_url: str) -> int:
    assert argv[0] == "python"
    env = {**os.environ, "GOSHEN_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, *argv[1:]], env=env, timeout=60).returncode


@pytest.fixture
def worker_row(database_url: str) -> Iterator[Callable[[timedelta], None]]:
    """A function that registers this host's worker with a heartbeat `age` old."""
    engine = make_engine(database_url)
    factory = make_sessionmaker(engine)

    def register(age: timedelta) -> None:
        with session_scope(factory) as session:
            worker = Worker(
                id=f"{socket.gethostname()}-1-abc123",
                host=socket.gethostname(),
                pid=1,
                device_name="cpu",
                device_memory_bytes=None,
                loaded_models=[],
                status=WorkerStatus.idle,
            )
            session.merge(worker)
        with session_scope(factory) as session:
            session.execute(update(Worker).values(heartbeat_at=utcnow() - age))

    yield register
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("check", WORKER_CHECKS.values(), ids=WORKER_CHECKS.keys())
def test_worker_check_follows_the_heartbeat(
    check: list[str], database_url: str, worker_row: Callable[[timedelta], None]
) -> None:
    assert run_check(check, database_url) == 1  # no worker on this host yet
    worker_row(timedelta(seconds=5))
    assert run_check(check, database_url) == 0
    worker_row(timedelta(minutes=5))  # a worker that stopped heartbeating
    assert run_check(check, database_url) == 1


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("check", DATABASE_CHECKS.values(), ids=DATABASE_CHECKS.keys())
def test_webhooks_check_follows_the_database(check: list[str], database_url: str) -> None:
    assert run_check(check, database_url) == 0
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nothing listens on
    port = closed.getsockname()[1]
    closed.close()
    assert run_check(check, f"postgresql://goshen@127.0.0.1:{port}/goshen") == 1

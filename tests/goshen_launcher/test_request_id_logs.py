"""One request id follows a job through the platform's processes, as production runs them:
`goshen api`, `goshen worker` and `goshen webhooks`, each a real process logging JSON
(GOSHEN_LOG_FORMAT=json) to a file of its own. A job submitted with a webhook to a loopback
receiver is found, by its id and the request's, in all three logs; every line they write is one
JSON object.

PostgreSQL: the production shape (processes sharing one database, woken by NOTIFY); the request
id's storage is tested on SQLite too (tests/serving/http/test_request_ids.py).
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from goshen.config import Settings
from goshen.db.models import Model
from goshen_launcher.services import child_environment
from tests.fixtures.accounts import Account
from tests.fixtures.servers import wait_until_answers
from tests.serving.webhooks.receivers import Receiver, ReceiverHandler

# The suites that start a platform of processes run one after another (make test: --dist loadgroup).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("platform-processes"),
    pytest.mark.parametrize("backend", ["postgresql"]),
]

SERVICES = ("api", "worker", "webhooks")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReceiverHandler)
    receiver = Receiver(server)
    server.receiver = receiver  # type: ignore[attr-defined]  # read by its handler
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _goshen(service: str, settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`goshen <service>` with `settings`, its output in `log`; stopped with SIGTERM (so it
    writes its last lines) after the block."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "goshen_launcher.cli", service],
            env=child_environment(settings),
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _entries(log: Path) -> list[dict[str, Any]]:
    """Every line of `log`, each parsed as the JSON object it must be."""
    entries = []
    for number, line in enumerate(log.read_text().splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{log.name} line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict) and {"ts", "level", "logger", "message"} <= set(entry)
        entries.append(entry)
    return entries


def _about(entries: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("job_id") == job_id or job_id in e.get("job_ids", ())]


def _wait_for_completed(receiver: Receiver, processes: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 180
    while not any(b'"job.completed"' in received.body for received in receiver.received):
        for name, process in processes.items():
            assert process.poll() is None, f"goshen {name} exited with {process.returncode}"
        assert time.monotonic() < deadline, "the job's completed event never arrived"
        time.sleep(0.2)


def test_one_request_id_is_in_the_api_worker_and_dispatcher_logs_of_a_job(
    serving_settings: Settings,
    developer: Account,
    digits_model: Model,
    tmp_path: Path,
) -> None:
    settings = Settings(
        **{
            **serving_settings.model_dump(),
            "_env_file": None,
            "api_port": _free_port(),
            "log_format": "json",
            "log_level": "INFO",
        }
    )
    logs = {service: tmp_path / f"{service}.log" for service in SERVICES}
    request_id = f"req-{secrets.token_hex(8)}"
    with _receiver() as receiver, ExitStack() as running:
        processes = {
            service: running.enter_context(_goshen(service, settings, logs[service]))
            for service in SERVICES
        }
        wait_until_answers(f"{settings.api_url}/healthz", processes["api"], log=logs["api"])
        submitted = httpx.post(
            f"{settings.api_url}/v1/generate",
            json={
                "model": digits_model.name,
                "input": {"digit": 3, "num_inference_steps": 2},
                "webhook": receiver.url,
            },
            headers=developer.headers | {"X-Request-Id": request_id},
            timeout=30,
        )
        assert submitted.status_code == 201, submitted.text
        assert submitted.headers["X-Request-Id"] == request_id
        job_id = submitted.json()["id"]
        _wait_for_completed(receiver, processes)

    about = {service: _about(_entries(log), job_id) for service, log in logs.items()}
    for service, entries in about.items():
        assert entries, f"goshen {service} logged nothing about job {job_id}"
        assert {entry.get("request_id") for entry in entries} == {request_id}, (service, entries)
    assert any(e["message"].startswith(f"queued job {job_id}") for e in about["api"])
    assert any(e["message"].startswith(f"claimed job {job_id}") for e in about["worker"])
    assert all(e["worker_id"].startswith(socket.gethostname()) for e in about["worker"])
    assert any(e["message"].endswith(": delivered") for e in about["webhooks"])
    # uvicorn's access line for the submission carries the request id too.
    access = [e for e in _entries(logs["api"]) if e["logger"] == "uvicorn.access"]
    assert {
        "method": "POST",
        "path": "/v1/generate",
        "status": 201,
        "request_id": request_id,
    }.items() <= next(e for e in access if e.get("request_id") == request_id).items()
    # The webhook's job, like GET /v1/jobs/{id}, says which request submitted it.
    completed = next(
        json.loads(received.body)
        for received in receiver.received
        if b'"job.completed"' in received.body
    )
    assert completed["data"]["request_id"] == request_id

"""`goshen api` on SIGTERM, as a process: open job-event and training-log streams are told to
end, the process stops within GOSHEN_SHUTDOWN_GRACE_SECONDS, and clients resuming with
`Last-Event-ID` on a second API process miss no event (PostgreSQL: two processes, one database)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Dataset, DatasetKind, JobEvent, Model
from goshen_launcher.services import child_environment
from tests.fixtures.accounts import Account
from tests.fixtures.servers import wait_until_answers
from tests.fixtures.training import run_training_job

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])

API = [sys.executable, "-m", "goshen_launcher.cli", "api"]
# Long enough that a server that waited for its streams would be seen to wait; a server that
# tells them to end stops in about a second.
GRACE_SECONDS = 10
LOG_LINES = ["loading 40 images", "  epoch 1/1: loss 0.91", "registered version 1"]


@dataclass
class Event:
    id: str | None
    name: str
    data: str


@dataclass
class StreamReader:
    """Reads one server-sent event stream in a thread until the server ends it."""

    url: str
    headers: dict[str, str]
    events: list[Event] = field(default_factory=list)
    opened: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> StreamReader:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def wait_open(self) -> StreamReader:
        """Wait for the first event: the stream is open on the server."""
        assert self.opened.wait(30), f"{self.url} sent no event: {self.error!r}"
        return self

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=60) as stream:
                assert stream.status_code == 200, stream.read()
                fields: dict[str, str] = {}
                for line in stream.iter_lines():
                    if line:
                        if not line.startswith(":"):  # a keep-alive comment
                            name, _, value = line.partition(": ")
                            fields[name] = value
                        continue
                    if fields:
                        self.events.append(
                            Event(fields.get("id"), fields.get("event", ""), fields["data"])
                        )
                        self.opened.set()
                    fields = {}
        except BaseException as exc:  # noqa: BLE001 - reported by the test that waits on it
            self.error = exc
        finally:
            self.ended.set()

    def finish(self, timeout: float) -> list[Event]:
        assert self.ended.wait(timeout), f"{self.url} is still open"
        assert self.error is None, self.error
        return self.events


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningApi:
    process: subprocess.Popen[bytes]
    url: str


@contextmanager
def goshen_api(settings: Settings, log: Path) -> Iterator[RunningApi]:
    """`goshen api` with `settings` (on a port of its own), serving once the block begins."""
    served = Settings(**{**settings.model_dump(), "_env_file": None, "api_port": _free_port()})
    with log.open("ab") as output:
        process = subprocess.Popen(
            API,
            env=child_environment(served),
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )
    try:
        wait_until_answers(f"{served.api_url}/healthz", process, log=log)
        yield RunningApi(process, served.api_url)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def api_settings(serving_settings: Settings) -> Settings:
    return Settings(
        **{
            **serving_settings.model_dump(),
            "_env_file": None,
            "shutdown_grace_seconds": GRACE_SECONDS,
            "worker_drain_seconds": 2,  # must be shorter; no worker stops here
        }
    )


def _images_dataset(sessions: sessionmaker[Session], user_id: str) -> str:
    with session_scope(sessions) as session:
        dataset = Dataset(
            user_id=user_id,
            name="digits",
            kind=DatasetKind.images,
            storage_prefix=f"datasets/{user_id}/digits",
            file_count=100,
        )
        session.add(dataset)
        session.flush()
        return dataset.id


def _job_event_ids(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    with sessions() as session:
        ids = session.scalars(select(JobEvent.id).where(JobEvent.job_id == job_id))
        return [str(event_id) for event_id in sorted(ids)]


def test_sigterm_ends_open_streams_and_clients_resume_on_another_process(
    api_settings: Settings,
    developer: Account,
    digits_model: Model,
    sessions: sessionmaker[Session],
    start_worker: Callable[..., threading.Event],
    tmp_path: Path,
) -> None:
    log = tmp_path / "api.log"
    with goshen_api(api_settings, log) as first:
        with httpx.Client(base_url=first.url, headers=developer.headers, timeout=30) as client:
            generate = {"model": digits_model.name, "input": {"digit": 3, "num_inference_steps": 4}}
            job = client.post("/v1/generate", json=generate)
            assert job.status_code == 201, job.text
            training = client.post(
                "/v1/training-jobs",
                json={
                    "dataset_id": _images_dataset(sessions, developer.user_id),
                    "task": "diffusion",
                    "model_name": "my-digits",
                },
            )
            assert training.status_code == 201, training.text
        job_id, training_id = job.json()["id"], training.json()["id"]
        # No worker and no Dagster: both jobs stay queued, and their streams stay open.
        job_stream = StreamReader(f"{first.url}/v1/jobs/{job_id}/events", developer.headers)
        log_stream = StreamReader(
            f"{first.url}/v1/training-jobs/{training_id}/logs", developer.headers
        )
        job_stream.start().wait_open()
        log_stream.start().wait_open()

        started = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        code = first.process.wait(timeout=GRACE_SECONDS + 30)
        stopped_after = time.monotonic() - started
        before_job = job_stream.finish(timeout=5)
        before_log = log_stream.finish(timeout=5)

    said = log.read_text()[-3000:]
    assert code == 0, said
    assert stopped_after < GRACE_SECONDS, f"stopped {stopped_after:.1f} s after SIGTERM: {said}"
    for events in (before_job, before_log):
        assert events[-1].name == "shutdown" and events[-1].id is None, events
        assert json.loads(events[-1].data)["reason"] == "shutdown"
    assert [event.name for event in before_job[:-1]] == ["status"]  # queued
    assert [event.name for event in before_log[:-1]] == ["status"]  # queued

    # The clients resume on a second process; meanwhile the jobs run and end.
    with goshen_api(api_settings, log) as second:
        resumed_job = StreamReader(
            f"{second.url}/v1/jobs/{job_id}/events",
            developer.headers | {"Last-Event-ID": str(before_job[-2].id)},
        ).start()
        resumed_log = StreamReader(
            f"{second.url}/v1/training-jobs/{training_id}/logs",
            developer.headers | {"Last-Event-ID": str(before_log[-2].id)},
        ).start()
        start_worker()
        run_training_job(sessions, training_id, LOG_LINES)
        after_job = resumed_job.finish(timeout=120)
        after_log = resumed_log.finish(timeout=60)

    assert after_job[-1].name == "done" and after_log[-1].name == "done"
    received = [event.id for event in before_job[:-1] + after_job]
    assert received == _job_event_ids(sessions, job_id)  # each once, in order, none missed
    lines = [event.data for event in before_log + after_log if event.name == "log"]
    assert lines == LOG_LINES

"""Open event streams end when they must: a key revoked or a user disabled while a job's event
stream or a training job's log stream is open ends it within seconds with `unauthorized`, and a
server that begins to stop ends every open stream at once with `shutdown` (no `done`), so that
its clients reconnect elsewhere. Real uvicorn, real sockets, both databases."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Dataset, DatasetKind, Model
from tests.fixtures.accounts import Account
from tests.fixtures.servers import Served, serve_app

# The issue asks for "within a few seconds"; the slack is for a shared, noisy 2-core machine.
ENDS_WITHIN_SECONDS = 15.0


@pytest.fixture
def served(serving_settings: Settings) -> Iterator[Served]:
    with serve_app(serving_settings) as running:
        yield running


@dataclass
class Ending:
    kinds: list[str]
    last_data: dict[str, object]
    seconds_after_trigger: float


def _follow_until_end(
    url: str, headers: dict[str, str], first: str, trigger: Callable[[], None]
) -> Ending:
    """Open the stream at `url`, wait for its first `first` event, call `trigger`, and read the
    stream to its end: the events' kinds, the last event's data, and how long the end took."""
    kinds: list[str] = []
    data: dict[str, object] = {}
    triggered = 0.0
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=ENDS_WITHIN_SECONDS * 2)) as http,
        http.stream("GET", url, headers=headers) as stream,
    ):
        assert stream.status_code == 200, stream.read()
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kinds.append(line.removeprefix("event: "))
            elif line.startswith("data: ") and kinds[-1] != "log":
                data = json.loads(line.removeprefix("data: "))
            elif not line and kinds and kinds[-1] == first and not triggered:
                trigger()
                triggered = time.monotonic()
    return Ending(kinds, data, time.monotonic() - triggered)


def _job(served: Served, account: Account, model: Model) -> str:
    created = httpx.post(
        f"{served.url}/v1/generate",
        json={"model": model.name, "input": {"digit": 4}},
        headers=account.headers,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _training_job(served: Served, account: Account, sessions: sessionmaker[Session]) -> str:
    with session_scope(sessions) as session:
        dataset = Dataset(
            user_id=account.user_id,
            name="d",
            kind=DatasetKind.images,
            storage_prefix=f"datasets/{account.user_id}/x",
            file_count=100,
        )
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
    body = {"dataset_id": dataset_id, "task": "diffusion", "model_name": "my-digits"}
    created = httpx.post(f"{served.url}/v1/training-jobs", json=body, headers=account.headers)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _revoke(served: Served, account: Account) -> Callable[[], None]:
    def revoke() -> None:
        answer = httpx.delete(f"{served.url}/v1/keys/{account.key_id}", headers=account.headers)
        assert answer.status_code < 300, answer.text

    return revoke


def _disable(served: Served, admin: Account, account: Account) -> Callable[[], None]:
    def disable() -> None:
        answer = httpx.patch(
            f"{served.url}/v1/admin/users/{account.user_id}",
            json={"disabled": True},
            headers=admin.headers,
        )
        assert answer.status_code == 200, answer.text

    return disable


def test_a_revoked_key_ends_its_open_job_event_stream_within_seconds(
    served: Served, developer: Account, catalog_model: Model
) -> None:
    job_id = _job(served, developer, catalog_model)
    url = f"{served.url}/v1/jobs/{job_id}/events"
    ending = _follow_until_end(url, developer.headers, "status", _revoke(served, developer))
    assert ending.kinds == ["status", "unauthorized"]
    assert "revoked" in str(ending.last_data["detail"])
    assert ending.seconds_after_trigger < ENDS_WITHIN_SECONDS


def test_a_disabled_user_s_open_streams_end_within_seconds(
    served: Served,
    developer: Account,
    admin: Account,
    catalog_model: Model,
    sessions: sessionmaker[Session],
) -> None:
    job_id = _job(served, developer, catalog_model)
    training_id = _training_job(served, developer, sessions)
    disable = _disable(served, admin, developer)
    ending = _follow_until_end(
        f"{served.url}/v1/jobs/{job_id}/events", developer.headers, "status", disable
    )
    assert ending.kinds == ["status", "unauthorized"]
    assert "disabled" in str(ending.last_data["detail"])
    assert ending.seconds_after_trigger < ENDS_WITHIN_SECONDS
    # Opened again with the disabled user's key: refused outright.
    refused = httpx.get(
        f"{served.url}/v1/training-jobs/{training_id}/logs", headers=developer.headers
    )
    assert refused.status_code == 401


def test_a_revoked_key_ends_its_open_training_log_stream_within_seconds(
    served: Served, developer: Account, sessions: sessionmaker[Session]
) -> None:
    training_id = _training_job(served, developer, sessions)
    url = f"{served.url}/v1/training-jobs/{training_id}/logs"
    ending = _follow_until_end(url, developer.headers, "status", _revoke(served, developer))
    assert ending.kinds == ["status", "unauthorized"]
    assert ending.last_data["status"] == 401 and "revoked" in str(ending.last_data["detail"])
    assert ending.seconds_after_trigger < ENDS_WITHIN_SECONDS


def test_a_stopping_server_ends_every_open_stream_with_shutdown_and_no_done(
    served: Served, developer: Account, catalog_model: Model, sessions: sessionmaker[Session]
) -> None:
    job_id = _job(served, developer, catalog_model)
    training_id = _training_job(served, developer, sessions)
    endings: dict[str, Ending] = {}
    opened = threading.Barrier(3)

    def follow(name: str, url: str) -> None:
        endings[name] = _follow_until_end(url, developer.headers, "status", opened.wait)

    followers = [
        threading.Thread(target=follow, args=("job", f"{served.url}/v1/jobs/{job_id}/events")),
        threading.Thread(
            target=follow, args=("log", f"{served.url}/v1/training-jobs/{training_id}/logs")
        ),
    ]
    for follower in followers:
        follower.start()
    opened.wait(timeout=30)  # both streams are open and have sent their first event
    served.begin_shutdown()
    for follower in followers:
        follower.join(timeout=ENDS_WITHIN_SECONDS)
        assert not follower.is_alive(), "a stream stayed open after the server began to stop"
    for name, ending in endings.items():
        assert ending.kinds == ["status", "shutdown"], name
        assert ending.last_data["reason"] == "shutdown"
    # A stream opened while the server stops ends at once too.
    late = httpx.get(f"{served.url}/v1/jobs/{job_id}/events", headers=developer.headers)
    assert late.text.count("event: shutdown") == 1 and "event: done" not in late.text

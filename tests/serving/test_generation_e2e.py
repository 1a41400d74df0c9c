"""The generation API end to end on PostgreSQL, as a developer meets it: uvicorn serving the API, a
worker, the webhook dispatcher, a webhook receiver on loopback, and a real MLflow registry holding
a tiny random-weights digits model."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from PIL import Image

from goshen.config import Settings
from goshen.db.models import Model, Role
from serving.webhooks import signing
from serving.webhooks.delivery import run_dispatcher
from tests.fixtures.accounts import Account

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])

# The Standard Webhooks spec's published test vector (standard-webhooks, libraries/python tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID, VECTOR_TIMESTAMP = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


class Receiver(ThreadingHTTPServer):
    """Records every webhook delivery: headers and the exact bytes received."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/goshen"

    def wait_for(self, count: int, timeout: float = 30) -> list[tuple[dict[str, str], bytes]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout), (
                self.deliveries
            )
            return list(self.deliveries)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.arrived:
            self.server.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.server.arrived.notify_all()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()


@pytest.fixture
def platform(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    start_worker: Callable[..., threading.Event],
) -> Iterator[Settings]:
    """API, one worker (each step slowed a little, so tests can act mid-job) and the dispatcher."""
    stop = threading.Event()
    with run_api(serving_settings) as served:
        dispatcher = threading.Thread(target=run_dispatcher, args=(served, stop), daemon=True)
        dispatcher.start()
        start_worker(step_seconds=0.01)
        yield served
        stop.set()
        dispatcher.join(timeout=30)


def _events(client: httpx.Client, job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The job's whole event stream, read until `done`."""
    events, kind = [], None
    with client.stream("GET", job["urls"]["stream"], timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


def test_a_developer_generates_digits_end_to_end(
    platform: Settings,
    make_account: Callable[..., Account],
    digits_model: Model,
    receiver: Receiver,
) -> None:
    admin = make_account(Role.admin)
    with httpx.Client(base_url=platform.api_url, headers=admin.headers) as as_admin:
        user = as_admin.post("/v1/admin/users", json={"email": "dev@example.com"}).json()
        key = as_admin.post(f"/v1/admin/users/{user['id']}/keys", json={"name": "e2e"}).json()
    developer = httpx.Client(
        base_url=platform.api_url, headers={"Authorization": f"Bearer {key['key']}"}, timeout=90
    )
    secret = developer.get("/v1/webhooks/default/secret").json()["key"]
    body = {
        "model": digits_model.name,
        "input": {"digit": 7, "num_images": 2, "num_inference_steps": 12, "seed": 3},
        "webhook": receiver.url,
    }
    created = developer.post("/v1/generate", json=body)
    assert created.status_code == 201, created.text
    job = created.json()

    events = _events(developer, job)
    steps = [data["step"] for kind, data in events if kind == "progress"]
    assert steps == list(range(1, 13))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "status" and kinds[-2:] == ["status", "done"] and "log" in kinds
    assert [data["status"] for kind, data in events if kind == "status"] == [
        "queued",
        "running",
        "succeeded",
    ]
    finished = developer.get(job["urls"]["get"]).json()
    assert finished["status"] == "succeeded" and finished["metrics"]["run_seconds"] > 0
    (output,) = [data for kind, data in events if kind == "output"]
    assert len(output["images"]) == 2
    png = httpx.get(finished["output"]["images"][0]["url"])  # no key: the link is the credential
    assert png.status_code == 200
    assert Image.open(io.BytesIO(png.content)).size == (8, 8)

    deliveries = receiver.wait_for(4)
    assert signing.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    types = []
    for headers, raw in deliveries:
        signing.verify(secret, headers, raw)
        payload = json.loads(raw)
        assert payload["data"]["id"] == job["id"]
        types.append(payload["type"])
    assert sorted(types) == ["job.completed", "job.logs", "job.output", "job.start"]
    completed = next(json.loads(raw) for _, raw in deliveries if b"job.completed" in raw)
    assert completed["data"]["status"] == "succeeded"

    waited = developer.post(
        "/v1/generate",
        json={"model": digits_model.name, "input": {"digit": 1, "num_inference_steps": 4}},
        headers={"Prefer": "wait=30"},
    )
    assert waited.status_code == 201 and waited.json()["status"] == "succeeded"
    assert waited.json()["output"]["images"]

    replay_headers = {"Idempotency-Key": "e2e-replay"}
    first = developer.post("/v1/generate", json=body, headers=replay_headers).json()
    replay = developer.post("/v1/generate", json=body, headers=replay_headers)
    assert replay.status_code == 201 and replay.json()["id"] == first["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"

    intruder = make_account()
    for path in (job["urls"]["get"], job["urls"]["stream"]):
        assert httpx.get(path, headers=intruder.headers).status_code == 404
    assert httpx.post(job["urls"]["cancel"], headers=intruder.headers).status_code == 404
    developer.close()


def test_cancel_works_on_running_and_on_queued_jobs(
    platform: Settings, developer: Account, digits_model: Model
) -> None:
    client = httpx.Client(base_url=platform.api_url, headers=developer.headers, timeout=60)
    long = client.post(
        "/v1/generate",
        json={"model": digits_model.name, "input": {"digit": 2, "num_inference_steps": 200}},
    ).json()
    # Another step count: it cannot join the running batch, so it waits in the queue.
    waiting = client.post(
        "/v1/generate",
        json={"model": digits_model.name, "input": {"digit": 2, "num_inference_steps": 199}},
    ).json()
    with client.stream("GET", long["urls"]["stream"]) as stream:
        for line in stream.iter_lines():
            if line == "event: progress":
                break  # it runs
    queued = client.post(waiting["urls"]["cancel"]).json()
    assert queued["status"] == "canceled"
    running = client.post(long["urls"]["cancel"]).json()
    assert running["status"] == "running" and running["cancel_requested"]
    events = _events(client, long)
    assert events[-1] == ("done", {"status": "canceled"})
    ended = client.get(long["urls"]["get"]).json()
    assert ended["status"] == "canceled" and ended["output"] is None
    assert ended["progress"]["step"] < 200
    client.close()

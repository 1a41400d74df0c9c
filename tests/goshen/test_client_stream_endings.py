"""The SDK follows a job's events across the server's own endings of the stream: `shutdown` (its
API process is stopping) reopens it, after the last event seen, on whichever process answers,
and neither ends nor fails the stream; `unauthorized` (the key was revoked while the stream was
open) raises Unauthorized. Two real APIs on one database behind a switchable transport, which
stands in for a load balancer (the one fake: the tests run no proxy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from goshen.client import GoshenClient, Unauthorized
from goshen.config import Settings
from goshen.db.models import Model
from tests.fixtures.accounts import Account
from tests.fixtures.servers import Served, serve_app


class Balancer(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Sends every request to the API on `port`: switch it and the next request goes there."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.real = httpx.HTTPTransport()
        self.real_async = httpx.AsyncHTTPTransport()
        self.streams: list[httpx.Request] = []

    def _route(self, request: httpx.Request) -> httpx.Request:
        request.url = request.url.copy_with(port=self.port)
        if request.url.path.endswith("/events"):
            self.streams.append(request)
        return request

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.real.handle_request(self._route(request))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.real_async.handle_async_request(self._route(request))

    def close(self) -> None:
        self.real.close()

    async def aclose(self) -> None:
        await self.real_async.aclose()


@pytest.fixture
def catalog_model(make_model: Callable[..., Model]) -> Model:
    """A catalog entry the jobs are queued for (no worker runs them)."""
    return make_model()


@pytest.fixture
def two_apis(serving_settings: Settings) -> Iterator[tuple[Served, Served]]:
    with serve_app(serving_settings) as first, serve_app(serving_settings) as second:
        yield first, second


def _port(served: Served) -> int:
    port = httpx.URL(served.url).port
    assert port is not None
    return port


def _cancel(served: Served, account: Account, job_id: str) -> None:
    answer = httpx.post(f"{served.url}/v1/jobs/{job_id}/cancel", headers=account.headers)
    assert answer.status_code == 200, answer.text


def _all_event_ids(served: Served, account: Account, job_id: str) -> list[int]:
    with GoshenClient(served.url, account.key) as whole:
        return [event.id for event in whole.job_events(job_id)]


def test_a_stream_ended_by_a_stopping_server_resumes_on_another_losing_nothing(
    two_apis: tuple[Served, Served],
    developer: Account,
    catalog_model: Model,
    connect: Callable[..., Any],
) -> None:
    first, second = two_apis
    balancer = Balancer(_port(first))
    sdk = connect(first.url, developer.key, transport=balancer)
    job = sdk.create_job(catalog_model.name, {"digit": 4})
    events = iter(sdk.stream(job.id))
    seen = [next(events)]  # `queued`, from the first API

    balancer.port = _port(second)
    first.begin_shutdown()
    _cancel(second, developer, job.id)
    seen += list(events)

    assert [event.kind for event in seen][-1] == "done"
    assert "shutdown" not in [event.kind for event in seen]
    assert [event.id for event in seen] == _all_event_ids(second, developer, job.id)
    assert len(balancer.streams) == 2
    assert balancer.streams[1].headers["last-event-id"] == str(seen[0].id)


def test_the_older_client_s_job_events_resume_after_shutdown_too(
    two_apis: tuple[Served, Served], developer: Account, catalog_model: Model
) -> None:
    first, second = two_apis
    balancer = Balancer(_port(first))
    with GoshenClient(first.url, developer.key, transport=balancer) as client:
        job_id = client.generate(catalog_model.name, {"digit": 4})["id"]
        events = client.job_events(job_id)
        seen = [next(events)]
        balancer.port = _port(second)
        first.begin_shutdown()
        _cancel(second, developer, job_id)
        seen += list(events)
    assert [event.id for event in seen] == _all_event_ids(second, developer, job_id)
    assert seen[-1].kind == "done"


def test_a_key_revoked_while_its_stream_is_open_raises_unauthorized(
    two_apis: tuple[Served, Served],
    developer: Account,
    catalog_model: Model,
    connect: Callable[..., Any],
) -> None:
    first, _ = two_apis
    sdk = connect(first.url, developer.key)
    job = sdk.create_job(catalog_model.name, {"digit": 4})
    events = iter(sdk.stream(job.id))
    next(events)
    with GoshenClient(first.url, developer.key) as older:
        older_events = older.job_events(job.id)
        next(older_events)
        revoked = httpx.delete(f"{first.url}/v1/keys/{developer.key_id}", headers=developer.headers)
        assert revoked.status_code < 300, revoked.text
        for stream in (events, older_events):
            with pytest.raises(Unauthorized) as refused:
                next(stream)
            assert "revoked" in str(refused.value)

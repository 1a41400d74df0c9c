"""Rate limits as a client meets them: 429 problem+json with Retry-After and the RateLimit fields,
a quota per API key and route class, failed authentications limited per client address, one
limit across two API servers sharing Redis, and an API that keeps answering when Redis does not."""

from __future__ import annotations

import logging
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from limits import RateLimitItemPerSecond
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy.orm import Session, sessionmaker

from goshen import accounts
from goshen.config import Settings
from goshen.db import session_scope
from serving.app import create_app
from serving.http import rate_limits
from serving.http.rate_limits import LoopMemoryStorage
from tests.fixtures.accounts import Account

REDIS_URL = "redis://127.0.0.1:6379/0"
LOW_LIMITS = {
    "rate_limit_generate": "2/minute",
    "rate_limit_predict": "3/minute",
    "rate_limit_default": "4/minute",
    "rate_limit_failed_auth": "5/minute",
}
PREDICT = "/v1/models/no-such-model/predict"


def limited(settings: Settings, **changes: Any) -> Settings:
    return Settings(**{**settings.model_dump(), **LOW_LIMITS, **changes, "_env_file": None})


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(limited(settings))) as client:
        yield client


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the real Redis, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"Redis does not answer at {REDIS_URL}")
    prefix = f"goshen-test-{secrets.token_hex(6)}"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def second_key(sessions: sessionmaker[Session], account: Account) -> dict[str, str]:
    with session_scope(sessions) as session:
        user = accounts.get_user(session, account.user_id)
        _, plaintext = accounts.issue_key(session, user, name="second")
    return {"Authorization": f"Bearer {plaintext}"}


def assert_rate_limited(answer: httpx.Response, policy: str, quota: int) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert body["type"] == "/problems/rate-limit-exceeded"
    assert (body["policy"], body["quota"], body["window_seconds"]) == (policy, quota, 60)
    retry_after = int(answer.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert answer.headers["RateLimit-Policy"] == f'"{policy}";q={quota};w=60'
    assert answer.headers["RateLimit"] == f'"{policy}";r=0;t={retry_after}'


def test_over_its_quota_a_key_gets_429_with_retry_after_and_ratelimit_fields(
    api: TestClient, developer: Account
) -> None:
    for _ in range(4):
        answer = api.get("/v1/jobs", headers=developer.headers)
        assert answer.status_code == 200
        assert answer.headers["RateLimit-Policy"] == '"default";q=4;w=60'

    assert_rate_limited(api.get("/v1/jobs", headers=developer.headers), "default", 4)


def test_route_classes_have_quotas_of_their_own(api: TestClient, developer: Account) -> None:
    for _ in range(4):
        api.get("/v1/jobs", headers=developer.headers)
    assert api.get("/v1/jobs", headers=developer.headers).status_code == 429

    for _ in range(3):  # counted before the model is looked up
        answer = api.post(PREDICT, json={"inputs": [[1.0]]}, headers=developer.headers)
        assert answer.status_code == 404
        assert answer.headers["RateLimit-Policy"] == '"predict";q=3;w=60'
    answer = api.post(PREDICT, json={"inputs": [[1.0]]}, headers=developer.headers)
    assert_rate_limited(answer, "predict", 3)

    for _ in range(2):
        assert api.post("/v1/generate", json={}, headers=developer.headers).status_code == 422
    assert_rate_limited(api.post("/v1/generate", json={}, headers=developer.headers), "generate", 2)


def test_each_key_of_an_account_has_its_own_quota(
    api: TestClient, developer: Account, sessions: sessionmaker[Session]
) -> None:
    for _ in range(4):
        api.get("/v1/jobs", headers=developer.headers)
    assert api.get("/v1/jobs", headers=developer.headers).status_code == 429

    assert api.get("/v1/jobs", headers=second_key(sessions, developer)).status_code == 200


def test_guessing_keys_gets_429_while_keys_in_use_keep_working(
    api: TestClient, developer: Account, make_account: Callable[..., Account]
) -> None:
    assert api.get("/v1/jobs", headers=developer.headers).status_code == 200
    prefix = developer.key.rpartition("_")[0]
    guesses = [{"Authorization": f"Bearer {prefix}_{secrets.token_urlsafe(32)}"} for _ in range(6)]
    for guess in guesses[:5]:
        assert api.get("/v1/jobs", headers=guess).status_code == 401
    assert_rate_limited(api.get("/v1/jobs", headers=guesses[5]), "failed-auth", 5)
    # Requests with no key at all try no key: they are not counted, and still answer 401.
    assert api.get("/v1/jobs").status_code == 401

    # The key in use keeps working from the same address, even once its cache entry is dropped.
    api.app.state.api.principals.forget_user(developer.user_id)  # type: ignore[attr-defined]
    assert api.get("/v1/jobs", headers=developer.headers).status_code == 200
    # A key this process has never seen authenticate waits for the window, as the guesses do.
    assert api.get("/v1/jobs", headers=make_account().headers).status_code == 429


def test_rate_limits_switched_off_count_nothing(settings: Settings, developer: Account) -> None:
    with TestClient(create_app(limited(settings, rate_limits_enabled=False))) as api:
        for _ in range(10):
            answer = api.get("/v1/jobs", headers=developer.headers)
            assert answer.status_code == 200
            assert "RateLimit-Policy" not in answer.headers
        wrong = {"Authorization": "Bearer gsk_x_y"}
        for _ in range(10):
            assert api.get("/v1/jobs", headers=wrong).status_code == 401


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_two_api_servers_sharing_redis_share_one_quota(
    settings: Settings,
    developer: Account,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    redis_prefix: str,
) -> None:
    shared = limited(settings, redis_url=REDIS_URL, redis_key_prefix=redis_prefix)
    with run_api(shared) as first, run_api(shared) as second:
        urls = [f"http://127.0.0.1:{served.api_port}/v1/jobs" for served in (first, second)]
        answers = [httpx.get(urls[i % 2], headers=developer.headers) for i in range(6)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 429, 429]
    assert_rate_limited(answers[4], "default", 4)
    assert_rate_limited(answers[5], "default", 4)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_two_api_servers_without_redis_count_apart(
    settings: Settings,
    developer: Account,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
) -> None:
    """The control for the test above: what the servers share there, Redis shares."""
    with run_api(limited(settings)) as first, run_api(limited(settings)) as second:
        urls = [f"http://127.0.0.1:{served.api_port}/v1/jobs" for served in (first, second)]
        codes = [httpx.get(urls[i % 2], headers=developer.headers).status_code for i in range(8)]
    assert codes == [200] * 8


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


@pytest.fixture
def closed_redis() -> str:
    """A Redis URL on a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("down", ["silent_redis", "closed_redis"])
def test_a_redis_that_does_not_answer_leaves_the_api_answering_and_limiting(
    down: str,
    request: pytest.FixtureRequest,
    settings: Settings,
    developer: Account,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = request.getfixturevalue(down)
    unreachable = limited(settings, redis_url=url, redis_timeout_seconds=0.2)
    with (
        caplog.at_level(logging.WARNING, logger="serving.http.rate_limits"),
        TestClient(create_app(unreachable)) as api,
    ):
        started = time.monotonic()
        codes = [api.get("/v1/jobs", headers=developer.headers).status_code for _ in range(5)]
        elapsed = time.monotonic() - started

    # Each process then limits in its own memory; Redis was tried once, within its timeout.
    assert codes == [200, 200, 200, 200, 429]
    assert elapsed < 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "serving.http.rate_limits"]
    assert len(warnings) == 1
    assert re.search(r"Redis \(GOSHEN_REDIS_URL\) did not answer within 0.2 s", warnings[0])


def test_the_openapi_document_lists_429_on_every_authenticated_route(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    operations = [
        (path, operation)
        for path, methods in paths.items()
        for operation in methods.values()
        if isinstance(operation, dict) and operation.get("security")
    ]
    assert len(operations) > 20
    for path, operation in operations:
        answer = operation["responses"].get("429")
        assert answer is not None, path
        assert {"Retry-After", "RateLimit-Policy", "RateLimit"} <= set(answer["headers"])
    predict = paths["/v1/models/{name}/predict"]["post"]["responses"]["429"]
    schema = predict["content"]["application/problem+json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/RateLimitProblem"}
    # /v1/generate's own 429 (the active-job cap) names both.
    generate = paths["/v1/generate"]["post"]["responses"]["429"]["description"]
    assert "queued and running jobs" in generate and "rate limit" in generate


def test_in_memory_a_window_starts_over_when_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(rate_limits.time, "time", lambda: now[0])
    storage = LoopMemoryStorage()
    limiter = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(2, 10)

    assert [limiter.hit(item, "key") for _ in range(3)] == [True, True, False]
    assert limiter.get_window_stats(item, "key") == (1010.0, 0)
    now[0] = 1010.0
    assert limiter.hit(item, "key")
    assert limiter.hit(item, "other")

    # Once a sweep is due, the next new window drops the windows that ended.
    now[0] = 1000.0 + rate_limits.SWEEP_SECONDS + 30
    assert limiter.hit(item, "third")
    assert storage.get("key") == 0
    assert storage.reset() == 1

"""The API's in-process metrics move when their event happens: a rate limit refusing a request
(by route class), a /predict request answered (its latency, by model), and credit captured
(once its transaction commits: never for one rolled back, never twice)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.billing import ledger
from goshen.billing.captures import watch_captures
from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, session_scope
from goshen.db.models import CreditLedgerEntry, LedgerEntryKind, Role
from serving.app import create_app
from tests.fixtures.accounts import Account
from tests.fixtures.models import RegisteredModel, deploy_classifier
from tests.serving.http.metrics_scrape import Samples, samples, value

REFUSED = "goshen_rate_limit_refusals_total"
PREDICT_COUNT = "goshen_predict_duration_seconds_count"
CAPTURED = "goshen_credits_captured_micros_total"


def scrape(api: TestClient) -> Samples:
    return samples(api.get("/metrics").text)


@pytest.fixture
def limited(settings: Settings) -> Iterator[TestClient]:
    low = {"rate_limit_default": "2/minute", "rate_limit_failed_auth": "1/minute"}
    with TestClient(create_app(Settings(**{**settings.model_dump(), **low}))) as client:
        yield client


def test_rate_limit_refusals_count_by_route_class(limited: TestClient, developer: Account) -> None:
    before = scrape(limited)
    classes = ("generate", "predict", "default", "failed-auth")
    assert {c: value(before, REFUSED, route_class=c) for c in classes} == dict.fromkeys(classes, 0)
    answers = [limited.get("/v1/keys", headers=developer.headers).status_code for _ in range(3)]
    assert answers == [200, 200, 429]
    guessed = {"Authorization": f"Bearer gsk_{secrets.token_hex(16)}"}
    answers = [limited.get("/v1/keys", headers=guessed).status_code for _ in range(3)]
    assert answers == [401, 429, 429]
    after = scrape(limited)
    assert value(after, REFUSED, route_class="default") == 1
    assert value(after, REFUSED, route_class="failed-auth") == 2
    assert value(after, REFUSED, route_class="generate") == 0


def _predict(api: TestClient, account: Account, name: str, inputs: Any) -> int:
    response = api.post(
        f"/v1/models/{name}/predict", json={"inputs": inputs}, headers=account.headers
    )
    return response.status_code


def test_predict_latency_counts_answered_requests_by_model_and_their_credit_once_captured(
    serving_settings: Settings,
    make_account: Callable[..., Account],
    register_classifier: Callable[..., RegisteredModel],
    sessions: sessionmaker[Session],
) -> None:
    admin, developer = make_account(Role.admin), make_account(Role.developer)
    name = f"clf-{secrets.token_hex(3)}"
    register_classifier(name)
    with TestClient(create_app(serving_settings)) as api:
        deploy_classifier(api, admin.headers, name)
        assert value(scrape(api), PREDICT_COUNT, model=name) is None

        assert _predict(api, developer, name, {"features": [[0.5] * 64]}) == 200
        assert _predict(api, developer, name, {"features": [[0.5] * 64, [0.1] * 64]}) == 200
        assert _predict(api, developer, name, {"features": [[0.5] * 3]}) == 422  # not counted
        assert _predict(api, developer, "no-such-model", [[0.5] * 64]) == 404  # no series
        scraped = scrape(api)
        assert value(scraped, PREDICT_COUNT, model=name) == 2
        seconds = value(scraped, "goshen_predict_duration_seconds_sum", model=name)
        assert seconds is not None and 0 < seconds < 30
        assert not any(dict(labels).get("model") == "no-such-model" for _, labels in scraped)
        # Credit is captured when the key's chunk ends: here, when the API stops.
        assert value(scraped, CAPTURED, source="predict") == 0
        metrics = api.app.state.api.metrics  # type: ignore[attr-defined]
    with sessions() as session:
        captured = session.scalar(
            select(-func.sum(CreditLedgerEntry.amount_micros)).where(
                CreditLedgerEntry.kind == LedgerEntryKind.capture
            )
        )
    assert captured == 2 * 250  # the classifier's price per request
    stopped = samples(bytes(metrics.render().body).decode())
    assert value(stopped, CAPTURED, source="predict") == captured


def test_a_capture_is_told_once_after_its_commit_and_never_when_rolled_back(
    settings: Settings, developer: Account
) -> None:
    engine = make_engine(settings.resolved_database_url)
    factory = make_sessionmaker(engine)
    told: list[tuple[str, int]] = []
    watch_captures(factory, lambda source, micros: told.append((source, micros)))
    try:
        for source in ("predict:prc_1:key:1", "training:trn_1"):
            with session_scope(factory) as session:
                ledger.hold(
                    session,
                    user_id=developer.user_id,
                    amount_micros=700,
                    refuse_short=True,
                    source=source,
                )
        with pytest.raises(RuntimeError), session_scope(factory) as session:
            ledger.settle(
                session, user_id=developer.user_id, source="predict:prc_1:key:1", cost_micros=300
            )
            assert told == []  # not before the commit
            raise RuntimeError("the transaction fails after the capture")
        assert told == []
        for _ in range(2):  # a second end captures nothing
            with session_scope(factory) as session:
                ledger.settle(
                    session,
                    user_id=developer.user_id,
                    source="predict:prc_1:key:1",
                    cost_micros=300,
                )
        with session_scope(factory) as session:
            ledger.settle(
                session, user_id=developer.user_id, source="training:trn_1", cost_micros=900
            )
    finally:
        engine.dispose()
    assert told == [("predict", 300), ("training", 700)]  # never more than the hold

"""GET /v1/usage and GET /v1/admin/usage: sums that equal the seeded usage events by day, model
and user; only the caller's own usage; ranges checked with 422s naming the parameter."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import Model, utcnow
from tests.fixtures.accounts import Account
from tests.fixtures.usage import add_usage_event

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
NOVEMBER = {"start": "2026-11-01", "end": "2026-11-30"}


def _seed(
    sessions: sessionmaker[Session],
    account: Account,
    model: Model | None,
    *events: tuple[datetime, int, int | None, float | None],
    jobs: bool = False,
) -> None:
    """Usage events of (when, cost, images, seconds); with `jobs`, each for a job of its own."""
    with session_scope(sessions) as session:
        for at, cost, images, seconds in events:
            add_usage_event(
                session, account, model, at, cost, job=jobs, images=images, seconds=seconds
            )


def _totals(cost: int, jobs: int, requests: int, images: int, seconds: float) -> dict[str, Any]:
    return {
        "cost_micros": cost,
        "jobs": jobs,
        "requests": requests,
        "images": images,
        "seconds": seconds,
    }


@pytest.fixture
def seeded(
    sessions: sessionmaker[Session],
    make_account: Callable[..., Account],
    make_model: Callable[..., Model],
) -> tuple[Account, Account, Model, Model]:
    """Two developers' November: the first used two models on two days, the second one model."""
    alice, bob = make_account(), make_account()
    painter, reader = make_model(), make_model()
    _seed(
        sessions,
        alice,
        painter,
        (NOV_1 + timedelta(hours=23, minutes=59), 4_000, 4, 2.0),
        (NOV_1 + timedelta(days=1, minutes=1), 2_000, 2, 1.0),
        jobs=True,
    )
    _seed(sessions, alice, reader, (NOV_1 + timedelta(days=1, hours=3), 7, None, 0.5))
    _seed(sessions, bob, reader, (NOV_1 + timedelta(days=9), 900, None, 0.25))
    # December: outside the range the tests ask for.
    _seed(sessions, alice, painter, (NOV_1 + timedelta(days=30), 10**6, 1, 1.0), jobs=True)
    return alice, bob, painter, reader


def test_usage_sums_equal_the_events_by_day_and_by_model_with_credit_now(
    client: TestClient, seeded: tuple[Account, Account, Model, Model]
) -> None:
    alice, _bob, painter, reader = seeded
    answer = client.get("/v1/usage", params=NOVEMBER, headers=alice.headers)
    assert answer.status_code == 200, answer.text
    usage = answer.json()
    assert (usage["start"], usage["end"]) == ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    assert usage["totals"] == _totals(6_007, 2, 1, 6, 3.5)
    assert usage["by_day"] == [
        {"day": "2026-11-01", **_totals(4_000, 1, 0, 4, 2.0)},
        {"day": "2026-11-02", **_totals(2_007, 1, 1, 2, 1.5)},
    ]
    assert usage["by_model"] == [
        {"model_id": painter.id, "model": painter.name, **_totals(6_000, 2, 0, 6, 3.0)},
        {"model_id": reader.id, "model": reader.name, **_totals(7, 0, 1, 0, 0.5)},
    ]
    assert usage["credit"] == {
        "balance_micros": 10_000_000,  # GOSHEN_NEW_USER_CREDITS: usage events alone charge nothing
        "held_micros": 0,
        "available_micros": 10_000_000,
        "unmetered": False,
    }


def test_usage_is_only_ever_the_callers_own(
    client: TestClient,
    seeded: tuple[Account, Account, Model, Model],
    make_account: Callable[..., Account],
) -> None:
    _alice, bob, _painter, reader = seeded
    usage = client.get("/v1/usage", params=NOVEMBER, headers=bob.headers).json()
    assert usage["totals"] == _totals(900, 0, 1, 0, 0.25)
    assert [row["model"] for row in usage["by_model"]] == [reader.name]
    stranger = client.get("/v1/usage", params=NOVEMBER, headers=make_account().headers).json()
    assert stranger["totals"] == _totals(0, 0, 0, 0, 0.0)
    assert stranger["by_day"] == stranger["by_model"] == []


def test_by_default_the_range_is_this_month_so_far(
    client: TestClient, sessions: sessionmaker[Session], developer: Account
) -> None:
    now = utcnow()
    _seed(sessions, developer, None, (now - timedelta(seconds=5), 11, None, None))
    usage = client.get("/v1/usage", headers=developer.headers).json()
    assert usage["start"] == now.strftime("%Y-%m-01T00:00:00Z")
    assert usage["totals"]["cost_micros"] == 11 and usage["totals"]["requests"] == 1


def test_a_datetime_end_is_excluded_and_an_offset_is_honoured(
    client: TestClient, seeded: tuple[Account, Account, Model, Model]
) -> None:
    alice = seeded[0]
    # 01:00 on Nov 2 at +02:00 is 23:00 on Nov 1 UTC: the first event (23:59) is left out.
    params = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T01:00:00+02:00"}
    usage = client.get("/v1/usage", params=params, headers=alice.headers).json()
    assert usage["end"] == "2026-11-01T23:00:00Z"
    assert usage["totals"]["cost_micros"] == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-11-02", "end": "2026-11-01"}, "end"),
        ({"start": "2024-01-01", "end": "2025-06-01"}, "end"),
        ({"start": "2020-01-01"}, "start"),
        ({"start": "2026-13-01"}, "start"),
        ({"end": "yesterday"}, "end"),
        ({"end": "0.5"}, "end"),  # not a Unix time
        ({"start": "1700000000"}, "start"),
        ({"end": "9999-12-31"}, "end"),
    ],
)
def test_a_bad_inverted_or_too_long_range_is_a_422_naming_the_parameter(
    client: TestClient, developer: Account, admin: Account, params: dict[str, str], field: str
) -> None:
    for path, account in (("/v1/usage", developer), ("/v1/admin/usage", admin)):
        answer = client.get(path, params={"group_by": "day", **params}, headers=account.headers)
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert {error["field"].split(".")[0] for error in answer.json()["errors"]} == {field}


def test_usage_needs_the_usage_scope(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    generator = make_account(scopes=["generate"])
    assert client.get("/v1/usage", headers=generator.headers).status_code == 403


def test_admins_see_every_users_usage_grouped_by_user_model_or_day(
    client: TestClient, seeded: tuple[Account, Account, Model, Model], admin: Account
) -> None:
    alice, bob, painter, reader = seeded

    def grouped(group_by: str, **params: Any) -> dict[str, Any]:
        answer = client.get(
            "/v1/admin/usage",
            params={**NOVEMBER, "group_by": group_by, **params},
            headers=admin.headers,
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert body["totals"]["cost_micros"] == (6_907 if "user_id" not in params else 6_007), (
            "totals count every event, whatever the cap"
        )
        return body

    users = grouped("user")
    assert [(row["user_id"], row["cost_micros"]) for row in users["groups"]] == [
        (alice.user_id, 6_007),
        (bob.user_id, 900),
    ]
    assert users["groups"][0]["email"].endswith("@example.com") and not users["has_more"]
    assert users["groups"][0]["model"] is None and users["groups"][0]["day"] is None
    models = grouped("model")
    assert [(row["model"], row["cost_micros"], row["requests"]) for row in models["groups"]] == [
        (painter.name, 6_000, 0),
        (reader.name, 907, 2),
    ]
    days = grouped("day")
    assert [(row["day"], row["cost_micros"]) for row in days["groups"]] == [
        ("2026-11-01", 4_000),
        ("2026-11-02", 2_007),
        ("2026-11-10", 900),
    ]
    capped = grouped("user", limit=1)
    assert [row["user_id"] for row in capped["groups"]] == [alice.user_id] and capped["has_more"]
    alices = grouped("day", user_id=alice.user_id)
    assert [row["day"] for row in alices["groups"]] == ["2026-11-01", "2026-11-02"]


def test_admin_usage_is_for_admins_and_needs_a_grouping(
    client: TestClient, developer: Account, admin: Account
) -> None:
    refused = client.get("/v1/admin/usage", params={"group_by": "user"}, headers=developer.headers)
    assert refused.status_code == 403
    missing = client.get("/v1/admin/usage", headers=admin.headers)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "group_by"

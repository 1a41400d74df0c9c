"""Training charges: the job's time limit at the training price held at submit (402 when short,
or past the key's spend cap), the seconds it ran captured when it succeeds or its user cancels
it, nothing when the platform fails it, once however often its end is reported.

The run itself is played by the functions a Dagster run calls (mark_running, finish); the
Dagster side is exercised end to end in tests/goshen_pipelines/defs/test_training_jobs_flow.py.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from goshen import training
from goshen.billing import training_charges
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import (
    CreditBalance,
    CreditLedgerEntry,
    Dataset,
    DatasetKind,
    Role,
    TrainingJob,
    TrainingStatus,
    UsageEvent,
    User,
)
from serving.app import create_app
from tests.fixtures.accounts import Account, create_account

EPOCHS = 5
IMAGES = 100
# 0.004 s per image and epoch, twice over, plus the startup allowance.
LIMIT_SECONDS = round(0.004 * IMAGES * EPOCHS * 2) + training.STARTUP_SECONDS
RAN = 30.0
PRICE = 100  # GOSHEN_TRAINING_PRICE_MICROS_PER_SECOND's default, as the test settings keep it
HOLD = LIMIT_SECONDS * PRICE


def _body(sessions: sessionmaker[Session], account: Account) -> dict[str, Any]:
    """A job on a fresh 100-image dataset of the account's."""
    with session_scope(sessions) as session:
        dataset = Dataset(
            user_id=account.user_id,
            name="d",
            kind=DatasetKind.images,
            storage_prefix=f"datasets/{account.user_id}/x",
            file_count=IMAGES,
        )
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
    config = {"epochs": EPOCHS}
    return {"dataset_id": dataset_id, "task": "diffusion", "model_name": "mm", "config": config}


@pytest.fixture
def submit(client: TestClient, sessions: sessionmaker[Session]) -> Callable[..., Any]:
    """Submit a job (`_body`) with the account's key, or other `headers`; the response."""

    def post(account: Account, headers: dict[str, str] | None = None) -> Any:
        body = _body(sessions, account)
        return client.post("/v1/training-jobs", json=body, headers=headers or account.headers)

    return post


def _entries(sessions: sessionmaker[Session], job_id: str) -> dict[str, tuple[int, int]]:
    """The job's ledger entries: kind -> (amount, held)."""
    entry = CreditLedgerEntry
    with sessions() as session:
        rows = session.execute(
            select(entry.kind, entry.amount_micros, entry.held_micros).where(
                entry.source == training_charges.source(job_id)
            )
        ).all()
    return {str(kind): (amount, held) for kind, amount, held in rows}


def _balance(sessions: sessionmaker[Session], user_id: str) -> tuple[int, int]:
    """(balance, held) summed from the ledger, checked against the cached row."""
    entry = CreditLedgerEntry
    with sessions() as session:
        total, held = session.execute(
            select(func.sum(entry.amount_micros), func.sum(entry.held_micros)).where(
                entry.user_id == user_id
            )
        ).one()
        cached = session.get(CreditBalance, user_id)
    total, held = total or 0, held or 0
    cached_sums = (cached.balance_micros, cached.held_micros) if cached else (0, 0)
    assert cached_sums == (total, held)
    assert total >= 0
    return total, held


def _usage(sessions: sessionmaker[Session], user_id: str) -> list[tuple[float, int, str]]:
    with sessions() as session:
        rows = session.execute(
            select(UsageEvent.quantity, UsageEvent.cost_micros, UsageEvent.unit).where(
                UsageEvent.user_id == user_id, UsageEvent.kind == "training"
            )
        ).all()
        unnamed = session.scalar(
            select(func.count()).where(
                UsageEvent.user_id == user_id, UsageEvent.training_job_id.is_(None)
            )
        )
    assert unnamed == 0, "every training usage event names its training job"
    return [(quantity, cost, str(unit)) for quantity, cost, unit in rows]


def _start(sessions: sessionmaker[Session], job_id: str, ago: float) -> None:
    """A run claims the job, as if `ago` seconds back."""
    with session_scope(sessions) as session:
        assert training.mark_running(session, job_id, "run-1")
        job = session.get_one(TrainingJob, job_id)
        assert job.started_at is not None
        job.started_at -= timedelta(seconds=ago)


def _end(sessions: sessionmaker[Session], job_id: str, status: TrainingStatus, ran: float) -> bool:
    """The run reports its end `ran` seconds after it started."""
    with session_scope(sessions) as session:
        started = session.get_one(TrainingJob, job_id).started_at
        assert started is not None
        return training.finish(
            session,
            job_id,
            status,
            price_micros_per_second=PRICE,
            ended_at=started + timedelta(seconds=ran),
        )


def _job(client: TestClient, account: Account, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/training-jobs/{job_id}", headers=account.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_submit_holds_the_time_limit_at_the_price(
    submit: Callable[..., Any], developer: Account, sessions: sessionmaker[Session]
) -> None:
    before, _ = _balance(sessions, developer.user_id)
    created = submit(developer)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["estimated_cost_micros"] == HOLD
    assert _entries(sessions, job["id"]) == {"hold": (0, HOLD)}
    assert _balance(sessions, developer.user_id) == (before, HOLD)


def test_short_credit_is_a_402_and_queues_nothing(
    client: TestClient, submit: Callable[..., Any], sessions: sessionmaker[Session]
) -> None:
    short = create_account(sessions, credits_micros=HOLD - 1)
    refused = submit(short)
    assert refused.status_code == 402, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["type"] == "/problems/insufficient-credit"
    assert (body["available"], body["required"]) == (
        HOLD - 1,
        HOLD,
    )
    listed = client.get("/v1/training-jobs", headers=short.headers).json()["data"]
    assert listed == []
    assert _balance(sessions, short.user_id) == (HOLD - 1, 0)


def test_admins_and_unmetered_accounts_are_held_but_never_refused(
    submit: Callable[..., Any], sessions: sessionmaker[Session]
) -> None:
    broke_admin = create_account(sessions, credits_micros=0, role=Role.admin)
    broke_unmetered = create_account(sessions, credits_micros=0)
    with session_scope(sessions) as session:
        session.execute(
            update(User).where(User.id == broke_unmetered.user_id).values(unmetered=True)
        )
    for account in (broke_admin, broke_unmetered):
        created = submit(account)
        assert created.status_code == 201, created.text
        assert _balance(sessions, account.user_id) == (0, HOLD)


def test_a_key_past_its_spend_cap_gets_402(
    client: TestClient, submit: Callable[..., Any], developer: Account
) -> None:
    created = client.post(
        "/v1/keys",
        json={"name": "capped", "monthly_spend_cap_micros": HOLD - 1},
        headers=developer.headers,
    )
    assert created.status_code == 201, created.text
    capped = {"Authorization": f"Bearer {created.json()['key']}"}
    refused = submit(developer, headers=capped)
    assert refused.status_code == 402, refused.text
    assert refused.json()["type"] == "/problems/spend-cap-exceeded"
    assert submit(developer).status_code == 201


def test_success_captures_the_seconds_run_and_releases_the_rest(
    client: TestClient,
    submit: Callable[..., Any],
    developer: Account,
    sessions: sessionmaker[Session],
) -> None:
    before, _ = _balance(sessions, developer.user_id)
    job_id = submit(developer).json()["id"]
    _start(sessions, job_id, ago=60)
    assert _end(sessions, job_id, TrainingStatus.succeeded, ran=RAN)

    cost = round(RAN * PRICE)
    job = _job(client, developer, job_id)
    assert (job["status"], job["gpu_seconds"], job["cost_micros"]) == ("succeeded", RAN, cost)
    hold = HOLD
    assert _entries(sessions, job_id) == {
        "hold": (0, hold),
        "capture": (-cost, -cost),
        "release": (0, cost - hold),
    }
    assert _balance(sessions, developer.user_id) == (before - cost, 0)
    assert _usage(sessions, developer.user_id) == [(RAN, cost, "second")]


def test_a_run_past_its_hold_is_charged_the_hold(
    client: TestClient,
    submit: Callable[..., Any],
    developer: Account,
    sessions: sessionmaker[Session],
) -> None:
    job_id = submit(developer).json()["id"]
    _start(sessions, job_id, ago=3 * LIMIT_SECONDS)
    assert _end(sessions, job_id, TrainingStatus.succeeded, ran=2 * LIMIT_SECONDS)
    job = _job(client, developer, job_id)
    assert job["cost_micros"] == job["estimated_cost_micros"] == HOLD
    assert set(_entries(sessions, job_id)) == {"hold", "capture"}


def test_a_users_cancel_charges_the_seconds_that_ran(
    client: TestClient,
    submit: Callable[..., Any],
    developer: Account,
    sessions: sessionmaker[Session],
) -> None:
    before, _ = _balance(sessions, developer.user_id)
    job_id = submit(developer).json()["id"]
    _start(sessions, job_id, ago=60)
    asked = client.post(f"/v1/training-jobs/{job_id}/cancel", headers=developer.headers)
    assert asked.status_code == 200 and asked.json()["status"] == "running"
    assert _entries(sessions, job_id).keys() == {"hold"}  # charged when the run stops
    # The run stops at its next epoch, or the sensor records its termination.
    assert _end(sessions, job_id, TrainingStatus.canceled, ran=RAN)

    cost = round(RAN * PRICE)
    job = _job(client, developer, job_id)
    assert (job["status"], job["cost_micros"]) == ("canceled", cost)
    assert _balance(sessions, developer.user_id) == (before - cost, 0)
    assert _usage(sessions, developer.user_id) == [(RAN, cost, "second")]


def test_a_queued_cancel_releases_everything(
    client: TestClient,
    submit: Callable[..., Any],
    developer: Account,
    sessions: sessionmaker[Session],
) -> None:
    before, _ = _balance(sessions, developer.user_id)
    job_id = submit(developer).json()["id"]
    canceled = client.post(f"/v1/training-jobs/{job_id}/cancel", headers=developer.headers)
    assert canceled.json()["status"] == "canceled" and canceled.json()["cost_micros"] == 0
    assert _entries(sessions, job_id).keys() == {"hold", "release"}
    assert _balance(sessions, developer.user_id) == (before, 0)
    assert _usage(sessions, developer.user_id) == []
    with session_scope(sessions) as session:
        assert not training.mark_running(session, job_id, "run-late")  # its run does not train


@pytest.mark.parametrize("cancel_requested", [False, True], ids=["failed", "terminated"])
def test_a_platform_failure_charges_nothing(
    client: TestClient,
    submit: Callable[..., Any],
    developer: Account,
    sessions: sessionmaker[Session],
    cancel_requested: bool,
) -> None:
    before, _ = _balance(sessions, developer.user_id)
    job_id = submit(developer).json()["id"]
    _start(sessions, job_id, ago=60)
    # A failed run, or one an operator terminated without the user asking (canceled, uncharged).
    status = TrainingStatus.canceled if cancel_requested else TrainingStatus.failed
    assert _end(sessions, job_id, status, ran=RAN)
    job = _job(client, developer, job_id)
    assert (job["gpu_seconds"], job["cost_micros"]) == (RAN, 0)
    assert _entries(sessions, job_id).keys() == {"hold", "release"}
    assert _balance(sessions, developer.user_id) == (before, 0)
    assert _usage(sessions, developer.user_id) == []


def test_an_end_reported_twice_charges_once(
    client: TestClient,
    submit: Callable[..., Any],
    developer: Account,
    sessions: sessionmaker[Session],
) -> None:
    before, _ = _balance(sessions, developer.user_id)
    job_id = submit(developer).json()["id"]
    _start(sessions, job_id, ago=60)
    assert _end(sessions, job_id, TrainingStatus.succeeded, ran=RAN)
    # The run's failure sensor, or a replayed success, after the job ended.
    assert not _end(sessions, job_id, TrainingStatus.succeeded, ran=2 * RAN)
    assert not _end(sessions, job_id, TrainingStatus.failed, ran=2 * RAN)

    cost = round(RAN * PRICE)
    job = _job(client, developer, job_id)
    assert (job["status"], job["cost_micros"], job["gpu_seconds"]) == ("succeeded", cost, RAN)
    assert _entries(sessions, job_id).keys() == {"hold", "capture", "release"}
    assert _balance(sessions, developer.user_id) == (before - cost, 0)
    assert _usage(sessions, developer.user_id) == [(RAN, cost, "second")]


def test_concurrent_ends_settle_once(
    client: TestClient,
    submit: Callable[..., Any],
    developer: Account,
    sessions: sessionmaker[Session],
) -> None:
    """The run's success and a failure sensor race; whichever ends the job sets its charge."""
    before, _ = _balance(sessions, developer.user_id)
    job_ids = [submit(developer).json()["id"] for _ in range(4)]
    for job_id in job_ids:
        _start(sessions, job_id, ago=60)
    ends = [
        (job_id, status)
        for job_id in job_ids
        for status in (TrainingStatus.succeeded, TrainingStatus.failed) * 2
    ]
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda end: _end(sessions, end[0], end[1], ran=RAN), ends))
    assert sum(won) == len(job_ids)

    charged = 0
    for job_id in job_ids:
        job = _job(client, developer, job_id)
        captured = _entries(sessions, job_id).get("capture", (0, 0))[0]
        assert job["cost_micros"] == -captured
        assert job["cost_micros"] == (round(RAN * PRICE) if job["status"] == "succeeded" else 0)
        charged += job["cost_micros"]
    assert _balance(sessions, developer.user_id) == (before - charged, 0)
    assert sum(cost for _, cost, _ in _usage(sessions, developer.user_id)) == charged


def test_the_402_is_documented(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    answer = document["paths"]["/v1/training-jobs"]["post"]["responses"]["402"]
    schema = answer["content"]["application/problem+json"]["schema"]
    assert schema == {
        "oneOf": [
            {"$ref": "#/components/schemas/InsufficientCreditProblem"},
            {"$ref": "#/components/schemas/SpendCapProblem"},
        ]
    }


def test_with_billing_off_nothing_is_held_or_charged_but_usage_is_metered(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    broke = create_account(sessions, credits_micros=0)
    off = settings.model_copy(update={"billing_enabled": False})
    with TestClient(create_app(off)) as client:
        created = client.post(
            "/v1/training-jobs", json=_body(sessions, broke), headers=broke.headers
        )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    _start(sessions, job_id, ago=60)
    assert _end(sessions, job_id, TrainingStatus.succeeded, ran=RAN)
    assert _entries(sessions, job_id) == {}
    assert _balance(sessions, broke.user_id) == (0, 0)
    assert _usage(sessions, broke.user_id) == [(RAN, round(RAN * PRICE), "second")]

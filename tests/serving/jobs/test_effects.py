"""What a job's end causes is decided in one place (serving.jobs.effects.JobEffects.ended): its
done events, its usage on success, its webhooks and its log line show up alike whichever way it
ends — a worker's success or failure, a cancel through the API or by the worker, or recovery
from a dead worker — on SQLite and PostgreSQL; so does its credit: captured for its cost on
success, the rest of its hold released, and all of it released on any other end, once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen.accounts import Principal
from goshen.db import session_scope
from goshen.db.models import (
    ApiKey,
    CreditLedgerEntry,
    Job,
    JobEvent,
    JobStatus,
    Model,
    UsageEvent,
    User,
    WebhookDelivery,
    utcnow,
)
from serving.jobs import transitions
from serving.jobs.claim import Claim, claim_batch
from serving.jobs.effects import Completion, JobEffects
from serving.jobs.submit import hold_credit
from tests.fixtures.accounts import Account

LEASE = 30.0
WEBHOOK = "https://hooks.example.com/goshen"

# How a claimed job ends: each calls one transition, none writes an effect of its own.
Ending = Callable[[Session, Claim, JobEffects], object]


def _succeed(session: Session, claim: Claim, effects: JobEffects) -> object:
    done = Completion(
        output={"images": []},
        run_seconds=1.0,
        device="cpu",
        peak_memory_bytes=None,
        images=1,
        compute_seconds=0.5,
        quantity=1.0,
        unit="image",
        cost_micros=7,
    )
    return transitions.complete(session, claim, done, effects)


def _fail(session: Session, claim: Claim, effects: JobEffects) -> object:
    return transitions.fail(
        session, claim, "out of memory", effects, retryable=False, retry_base_seconds=0
    )


def _cancel_running(session: Session, claim: Claim, effects: JobEffects) -> object:
    transitions.request_cancel(session, claim.job_id, effects)
    return transitions.confirm_canceled(session, claim, effects)


def _recover(session: Session, claim: Claim, effects: JobEffects) -> object:
    later = utcnow() + timedelta(seconds=LEASE + 1)
    return transitions.recover_stalled(session, effects, retry_base_seconds=0, now=later)


def _release_while_canceling(session: Session, claim: Claim, effects: JobEffects) -> object:
    """A stopping worker gives back a job whose cancel is pending: it ends canceled."""
    transitions.request_cancel(session, claim.job_id, effects)
    return transitions.release(session, claim, "the worker is stopping", effects)


def _retry_while_canceling(session: Session, claim: Claim, effects: JobEffects) -> object:
    """A retryable failure of a job whose cancel is pending ends it canceled, not queued."""
    transitions.request_cancel(session, claim.job_id, effects)
    session.get_one(Job, claim.job_id).max_attempts = 3  # attempts remain: a retry is due
    return transitions.fail(
        session, claim, "out of memory", effects, retryable=True, retry_base_seconds=0
    )


ENDINGS: dict[str, tuple[Ending, JobStatus]] = {
    "success": (_succeed, JobStatus.succeeded),
    "failure": (_fail, JobStatus.failed),
    "cancel": (_cancel_running, JobStatus.canceled),
    "release-while-canceling": (_release_while_canceling, JobStatus.canceled),
    "retry-while-canceling": (_retry_while_canceling, JobStatus.canceled),
    "recovery": (_recover, JobStatus.failed),
}


@pytest.fixture
def running_job(
    sessions: sessionmaker[Session],
    developer: Account,
    catalog_model: Model,
    job_effects: JobEffects,
) -> Claim:
    """A claimed job with a webhook, on its last attempt, and its claim."""
    with session_scope(sessions) as session:
        job = Job(
            user_id=developer.user_id,
            model_id=catalog_model.id,
            model_version="1",
            input={"digit": 1, "num_images": 1, "seed": 0},
            max_attempts=1,
            webhook=WEBHOOK,
        )
        transitions.enqueue(session, job)
        principal = Principal(
            session.get_one(User, developer.user_id), session.get_one(ApiKey, developer.key_id)
        )
        hold_credit(session, principal, job, catalog_model, 1)
    with session_scope(sessions) as session:
        (claim,) = claim_batch(session, "w1", job_effects, max_images=1, lease_seconds=LEASE)
    return claim


def _credit_of(sessions: sessionmaker[Session], job_id: str) -> dict[str, tuple[int, int]]:
    """The job's ledger entries: (amount, held) by kind."""
    with sessions() as session:
        rows = session.execute(
            select(
                CreditLedgerEntry.kind,
                CreditLedgerEntry.amount_micros,
                CreditLedgerEntry.held_micros,
            ).where(CreditLedgerEntry.source == f"job:{job_id}")
        ).all()
    return {kind: (amount, held) for kind, amount, held in rows}


def _effects_of(sessions: sessionmaker[Session], job_id: str) -> tuple[list[str], set[str], int]:
    with sessions() as session:
        events = session.scalars(
            select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
        webhooks = set(
            session.scalars(
                select(WebhookDelivery.event_type).where(WebhookDelivery.job_id == job_id)
            )
        )
        usage = len(session.scalars(select(UsageEvent).where(UsageEvent.job_id == job_id)).all())
    return list(events), webhooks, usage


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_end_causes_its_events_webhooks_and_log_line(
    ending: str,
    sessions: sessionmaker[Session],
    running_job: Claim,
    job_effects: JobEffects,
    caplog: pytest.LogCaptureFixture,
) -> None:
    end, status = ENDINGS[ending]
    with (
        caplog.at_level(logging.INFO, logger="serving.jobs.effects"),
        session_scope(sessions) as session,
    ):
        end(session, running_job, job_effects)
    with sessions() as session:
        job = session.get_one(Job, running_job.job_id)
    assert job.status == status
    events, webhooks, usage = _effects_of(sessions, job.id)
    assert events[-2:] == ["status", "done"]
    succeeded = status == JobStatus.succeeded
    assert webhooks == (
        {"start", "output", "logs", "completed"} if succeeded else {"start", "completed"}
    )
    assert usage == (1 if succeeded else 0)
    # The hold (one image at 1,000) is captured for the cost (7) on success, released otherwise.
    settled = {"capture": (-7, -7), "release": (0, -993)} if succeeded else {"release": (0, -1000)}
    assert _credit_of(sessions, job.id) == {"hold": (0, 1000), **settled}
    assert [r.getMessage() for r in caplog.records if r.name == "serving.jobs.effects"] == [
        f"job {job.id} ended {status.value} (attempt 1)"
    ]


def test_a_queued_job_canceled_through_the_api_causes_the_same(
    sessions: sessionmaker[Session],
    developer: Account,
    catalog_model: Model,
    job_effects: JobEffects,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with session_scope(sessions) as session:
        job = Job(user_id=developer.user_id, model_id=catalog_model.id, input={}, webhook=WEBHOOK)
        transitions.enqueue(session, job)
    with (
        caplog.at_level(logging.INFO, logger="serving.jobs.effects"),
        session_scope(sessions) as session,
    ):
        transitions.request_cancel(session, job.id, job_effects)
    events, webhooks, usage = _effects_of(sessions, job.id)
    assert events == ["status", "status", "done"] and webhooks == {"completed"} and usage == 0
    assert f"job {job.id} ended canceled (attempt 0)" in caplog.messages


def test_an_end_written_twice_causes_each_effect_once(
    sessions: sessionmaker[Session], running_job: Claim, job_effects: JobEffects
) -> None:
    """At-least-once: a job whose end is written again (a second worker) adds no second usage
    event or webhook; the stale claim's completion changes nothing at all."""
    with session_scope(sessions) as session:
        _succeed(session, running_job, job_effects)
    with session_scope(sessions) as session:
        assert _succeed(session, running_job, job_effects) is None
        job = session.get_one(Job, running_job.job_id)
        job_effects.ended(session, job)  # an effect replayed on its own
    assert _effects_of(sessions, running_job.job_id)[2] == 1
    assert _credit_of(sessions, running_job.job_id) == {
        "hold": (0, 1000),
        "capture": (-7, -7),
        "release": (0, -993),
    }
    with sessions() as session:
        rows = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.job_id == running_job.job_id)
        ).all()
    assert sorted(row.event_type for row in rows) == ["completed", "logs", "output", "start"]

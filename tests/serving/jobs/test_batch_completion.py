"""A finished batch's jobs end together (serving.jobs.completion.complete_batch): each job gets
exactly what transitions.complete gives one job — its output, one usage event, its output,
status and done events, its webhooks and its credit captured once — on SQLite and PostgreSQL,
while a job whose claim went stale in the meantime is left to the worker that holds it now."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
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
from serving.jobs.completion import Finished, complete_batch
from serving.jobs.effects import Completion, JobEffects
from serving.jobs.submit import hold_credit
from tests.fixtures.accounts import Account

LEASE = 30.0
WEBHOOK = "https://hooks.example.com/goshen"


def _done(cost: int) -> Completion:
    return Completion(
        output={"images": [{"key": "k", "content_type": "image/png", "width": 8, "height": 8}]},
        run_seconds=0.1,
        device="cpu",
        peak_memory_bytes=None,
        images=1,
        compute_seconds=0.05,
        quantity=1.0,
        unit="image",
        cost_micros=cost,
    )


def _queue(sessions: sessionmaker[Session], account: Account, model: Model, *, held: bool) -> str:
    with session_scope(sessions) as session:
        job = Job(
            user_id=account.user_id,
            api_key_id=account.key_id,
            model_id=model.id,
            model_version="1",
            input={"digit": 1, "num_images": 1, "seed": 0},
            batch_key="same",
            webhook=WEBHOOK,
        )
        transitions.enqueue(session, job)
        if held:
            principal = Principal(
                session.get_one(User, account.user_id), session.get_one(ApiKey, account.key_id)
            )
            hold_credit(session, principal, job, model, 1)
        return job.id


def _claim_all(sessions: sessionmaker[Session], effects: JobEffects, worker: str) -> list[Claim]:
    with session_scope(sessions) as session:
        return claim_batch(session, worker, effects, max_images=8, lease_seconds=LEASE)


def _complete(
    sessions: sessionmaker[Session], effects: JobEffects, claims: list[Claim], cost: int
) -> list[str]:
    entries = [("progress", (4, 4)), ("log", "generated 1 images")]
    with session_scope(sessions) as session:
        done = complete_batch(session, [Finished(c, _done(cost), entries) for c in claims], effects)
        return [job.id for job in done]


def test_each_job_of_a_batch_gets_its_output_one_usage_event_its_events_and_its_capture(
    sessions: sessionmaker[Session],
    developer: Account,
    catalog_model: Model,
    job_effects: JobEffects,
) -> None:
    held = [_queue(sessions, developer, catalog_model, held=True) for _ in range(3)]
    unheld = _queue(sessions, developer, catalog_model, held=False)
    claims = _claim_all(sessions, job_effects, "w1")
    assert [c.job_id for c in claims] == [*held, unheld]
    assert _complete(sessions, job_effects, claims, cost=7) == [*held, unheld]
    # Completing the same claims again (a retried transaction) changes nothing.
    assert _complete(sessions, job_effects, claims, cost=7) == []
    with sessions() as session:
        for job_id in [*held, unheld]:
            job = session.get_one(Job, job_id)
            assert job.status == JobStatus.succeeded
            assert job.output is not None and job.output["images"][0]["key"] == "k"
            assert job.progress == {"step": 4, "total": 4, "percentage": 100.0}
            assert job.logs.endswith("generated 1 images\n")
            assert job.lease_owner is None and job.cost_micros == 7
            usage = session.scalars(select(UsageEvent).where(UsageEvent.job_id == job_id)).all()
            assert [(u.kind, u.cost_micros, u.api_key_id) for u in usage] == [
                ("generation", 7, developer.key_id)
            ]
            events = session.scalars(
                select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            ).all()
            assert events == ["status", "status", "progress", "log", "output", "status", "done"]
            webhooks = session.scalars(
                select(WebhookDelivery.event_type).where(WebhookDelivery.job_id == job_id)
            ).all()
            assert sorted(webhooks) == ["completed", "logs", "output", "start"]
            ledger = dict(
                session.execute(
                    select(CreditLedgerEntry.kind, CreditLedgerEntry.held_micros).where(
                        CreditLedgerEntry.source == f"job:{job_id}"
                    )
                ).all()
            )
            expected = {"hold": 1000, "capture": -7, "release": -993} if job_id in held else {}
            assert ledger == expected


def test_a_job_whose_lease_was_taken_over_is_left_to_its_new_worker(
    sessions: sessionmaker[Session],
    developer: Account,
    catalog_model: Model,
    job_effects: JobEffects,
) -> None:
    first, second = (_queue(sessions, developer, catalog_model, held=True) for _ in range(2))
    stale = _claim_all(sessions, job_effects, "w1")
    with session_scope(sessions) as session:
        # w1 stopped renewing: recovery requeues both, and w2 claims the first job again.
        later = utcnow() + timedelta(seconds=LEASE + 1)
        transitions.recover_stalled(session, job_effects, retry_base_seconds=0, now=later)
    with session_scope(sessions) as session:
        (taken,) = claim_batch(
            session, "w2", job_effects, max_images=1, lease_seconds=LEASE, now=later
        )
    assert taken.job_id == first
    assert _complete(sessions, job_effects, stale, cost=7) == []
    with sessions() as session:
        job = session.get_one(Job, first)
        assert (job.status, job.lease_owner, job.output) == (JobStatus.running, "w2", None)
        assert session.get_one(Job, second).status == JobStatus.queued
        usage = session.scalar(select(func.count()).select_from(UsageEvent))
        captures = session.scalar(select(func.count()).where(CreditLedgerEntry.kind == "capture"))
    assert (usage, captures) == (0, 0)
    assert _complete(sessions, job_effects, [taken], cost=7) == [first]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_batch_completes_in_one_update_on_postgresql(
    sessions: sessionmaker[Session],
    developer: Account,
    catalog_model: Model,
    job_effects: JobEffects,
) -> None:
    """The UPDATE of jobs runs once for the batch, however many jobs it has."""
    from sqlalchemy import event

    for _ in range(5):
        _queue(sessions, developer, catalog_model, held=False)
    claims = _claim_all(sessions, job_effects, "w1")
    updates: list[str] = []

    def count(conn: object, cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            updates.append(statement)

    engine = sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert len(_complete(sessions, job_effects, claims, cost=0)) == 5
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(updates) == 1

"""The queue's state transitions on the jobs table, on SQLite and PostgreSQL: claims, leases,
fencing, retries with backoff, recovery of stalled jobs, cancellation and batching."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from goshen.billing import ledger
from goshen.db import session_scope
from goshen.db.models import Job, JobEvent, JobStatus, Model, UsageEvent, utcnow
from goshen.errors import ConflictError
from serving.jobs import lease, retry, transitions
from serving.jobs.claim import Claim, claim_batch
from serving.jobs.effects import Completion, JobEffects
from tests.fixtures.accounts import Account

LEASE = 30.0


@pytest.fixture
def new_job(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model
) -> Callable[..., str]:
    """Factory: a queued job of the tiny digits model, committed."""

    def make(**fields: object) -> str:
        with session_scope(sessions) as session:
            job = Job(
                user_id=developer.user_id,
                model_id=catalog_model.id,
                model_version=fields.pop("model_version", "1"),
                input={"digit": 1, "num_images": fields.pop("num_images", 1), "seed": 0},
                batch_key=fields.pop("batch_key", "steps4"),
                **fields,
            )
            transitions.enqueue(session, job)
            return job.id

    return make


def _claim(
    sessions: sessionmaker[Session],
    effects: JobEffects,
    worker: str = "w1",
    max_images: int = 1,
    **kwargs: Any,
) -> list[Claim]:
    with session_scope(sessions) as session:
        return claim_batch(
            session, worker, effects, max_images=max_images, lease_seconds=LEASE, **kwargs
        )


def _job(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def _done(cost: int = 7) -> Completion:
    return Completion(
        output={"images": []},
        run_seconds=1.0,
        device="cpu",
        peak_memory_bytes=1,
        images=1,
        compute_seconds=0.5,
        quantity=1.0,
        unit="image",
        cost_micros=cost,
    )


def test_a_job_enqueued_in_a_rolled_back_transaction_never_exists(
    job_effects: JobEffects,
    sessions: sessionmaker[Session],
    developer: Account,
    catalog_model: Model,
) -> None:
    with sessions() as session, session.begin():
        job = Job(user_id=developer.user_id, model_id=catalog_model.id, input={})
        transitions.enqueue(session, job)
        session.rollback()
    assert _claim(sessions, job_effects) == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_claims_take_the_highest_priority_then_the_oldest(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    old, _, urgent = new_job(), new_job(), new_job(priority=1)
    later = new_job(run_after=utcnow() + timedelta(hours=1))
    order = [_claim(sessions, job_effects)[0].job_id for _ in range(3)]
    assert order[:2] == [urgent, old]
    assert _claim(sessions, job_effects) == []  # `later` is not runnable yet
    assert _job(sessions, later).status == JobStatus.queued


def test_a_claim_starts_an_attempt_with_a_fresh_token_and_a_lease(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    (claim,) = _claim(sessions, job_effects)
    job = _job(sessions, job_id)
    assert job.status == JobStatus.running and job.attempt == 1
    assert job.claim_token == claim.token and job.lease_owner == "w1"
    assert (
        timedelta(seconds=LEASE - 5) < job.lease_expires_at - utcnow() <= timedelta(seconds=LEASE)
    )
    assert job.queue_seconds is not None and job.queue_seconds >= 0


def test_compatible_jobs_share_a_batch_up_to_its_size_in_images(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    first, second = new_job(num_images=2), new_job(num_images=2)
    too_big, other_key = new_job(num_images=3), new_job(batch_key="steps50")
    fits = new_job(num_images=1)
    batch = _claim(sessions, job_effects, max_images=5)
    assert [claim.job_id for claim in batch] == [first, second, fits]
    assert {_job(sessions, j).status for j in (too_big, other_key)} == {JobStatus.queued}


def test_jobs_of_different_versions_never_share_a_batch(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    new_job()
    new_job(model_version="2")
    assert len(_claim(sessions, job_effects, max_images=8)) == 1


def test_concurrent_workers_never_claim_the_same_job(
    job_effects: JobEffects,
    sessions: sessionmaker[Session],
    new_job: Callable[..., str],
    backend: str,
) -> None:
    jobs = {new_job() for _ in range(60)}
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(worker: str) -> None:
        while batch := _claim(sessions, job_effects, worker, max_images=3):
            with lock:
                claimed.extend(claim.job_id for claim in batch)

    threads = [threading.Thread(target=drain, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(jobs)


def test_heartbeats_extend_the_lease_and_report_cancel_requests(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    (claim,) = _claim(sessions, job_effects)
    with session_scope(sessions) as session:
        assert lease.heartbeat(session, claim, 600) == lease.LeaseState(True, False)
    assert _job(sessions, job_id).lease_expires_at - utcnow() > timedelta(seconds=500)
    with session_scope(sessions) as session:
        transitions.request_cancel(session, job_id, job_effects)
    with session_scope(sessions) as session:
        assert lease.heartbeat(session, claim, LEASE) == lease.LeaseState(True, True)


def test_a_job_that_heartbeats_is_never_recovered_as_stalled(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    (claim,) = _claim(sessions, job_effects)
    for minutes in (1, 2, 3):
        now = utcnow() + timedelta(minutes=minutes)
        with session_scope(sessions) as session:
            assert lease.heartbeat(session, claim, LEASE, now=now).held
            assert (
                transitions.recover_stalled(session, job_effects, retry_base_seconds=1, now=now)
                == []
            )
    assert _job(sessions, job_id).status == JobStatus.running


def test_a_worker_whose_lease_was_taken_over_changes_nothing(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    (stale,) = _claim(sessions, job_effects, "old-worker")
    later = utcnow() + timedelta(seconds=LEASE + 1)
    with session_scope(sessions) as session:
        assert [
            job.id
            for job in transitions.recover_stalled(
                session, job_effects, retry_base_seconds=0, now=later
            )
        ]
    (current,) = _claim(sessions, job_effects, "new-worker", now=later + timedelta(seconds=1))
    assert current.token != stale.token and current.attempt == 2

    with session_scope(sessions) as session:
        assert lease.heartbeat(session, stale, LEASE) == lease.LeaseState(held=False)
        assert not lease.report(session, stale, [("progress", (1, 4))]).held
        assert not lease.report(session, stale, [("log", "from the past")]).held
        assert transitions.complete(session, stale, _done(), job_effects) is None
        assert (
            transitions.fail(session, stale, "x", job_effects, retryable=True, retry_base_seconds=0)
            is None
        )
        assert not transitions.release(session, stale, "stopping", job_effects)
        assert transitions.confirm_canceled(session, stale, job_effects) is None
    job = _job(sessions, job_id)
    assert (job.status, job.lease_owner, job.claim_token) == (
        JobStatus.running,
        "new-worker",
        current.token,
    )
    assert "from the past" not in job.logs and job.progress is None
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(UsageEvent)) == 0

    with session_scope(sessions) as session:
        assert transitions.complete(session, current, _done(), job_effects) is not None
    assert _job(sessions, job_id).status == JobStatus.succeeded


def test_completion_meters_once_even_when_a_job_runs_twice(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    (claim,) = _claim(sessions, job_effects)
    with session_scope(sessions) as session:
        job = transitions.complete(session, claim, _done(cost=5000), job_effects)
        assert job is not None and job.cost_micros == 5000
        assert transitions.complete(session, claim, _done(), job_effects) is None  # the claim ended
    with sessions() as session:
        (usage,) = session.scalars(select(UsageEvent)).all()
    assert (usage.job_id, usage.images, usage.seconds, usage.cost_micros) == (job_id, 1, 0.5, 5000)


def test_failures_retry_with_backoff_then_fail_keeping_every_error(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    job_id = new_job(max_attempts=3)
    now = utcnow()
    for attempt in (1, 2, 3):
        (claim,) = _claim(sessions, job_effects, now=now)
        assert claim.attempt == attempt
        with session_scope(sessions) as session:
            transitions.fail(
                session,
                claim,
                f"boom {attempt}",
                job_effects,
                retryable=True,
                retry_base_seconds=10,
                now=now,
            )
        job = _job(sessions, job_id)
        if attempt < 3:
            wait = (job.run_after - now).total_seconds()
            assert 10 * 2 ** (attempt - 1) <= wait <= 15 * 2 ** (attempt - 1)
            assert _claim(sessions, job_effects, now=now) == []  # not before its backoff
            now = job.run_after
    assert job.status == JobStatus.failed and job.error == "boom 3"
    assert [entry["error"] for entry in job.attempt_errors] == ["boom 1", "boom 2", "boom 3"]


def test_a_failure_that_is_not_retryable_ends_the_job_at_once(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    (claim,) = _claim(sessions, job_effects)
    with session_scope(sessions) as session:
        transitions.fail(
            session, claim, "timed out", job_effects, retryable=False, retry_base_seconds=1
        )
    assert _job(sessions, job_id).status == JobStatus.failed


def test_retry_delays_double_with_jitter() -> None:
    rng = random.Random(0)
    delays = [retry.retry_delay(attempt, 2.0, rng) for attempt in (1, 2, 3, 4)]
    for attempt, delay in enumerate(delays, start=1):
        assert 2.0 * 2 ** (attempt - 1) <= delay <= 3.0 * 2 ** (attempt - 1)
    assert len({round(d / 2**i, 6) for i, d in enumerate(delays)}) > 1  # jittered


def test_stalled_jobs_are_queued_again_or_failed_when_out_of_attempts(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    retried, exhausted = new_job(max_attempts=2), new_job(max_attempts=1)
    _claim(sessions, job_effects, "dead-worker", max_images=1)
    _claim(sessions, job_effects, "dead-worker", max_images=1)
    later = utcnow() + timedelta(seconds=LEASE + 1)
    with session_scope(sessions) as session:
        recovered = transitions.recover_stalled(
            session, job_effects, retry_base_seconds=0, now=later
        )
    assert {job.id for job in recovered} == {retried, exhausted}
    assert _job(sessions, retried).status == JobStatus.queued
    failed = _job(sessions, exhausted)
    assert failed.status == JobStatus.failed and "stopped responding" in failed.error
    assert "dead-worker stopped renewing its lease" in failed.attempt_errors[0]["error"]


def test_recovery_takes_balances_before_jobs_as_a_worker_ending_them_does(
    job_effects: JobEffects,
    sessions: sessionmaker[Session],
    new_job: Callable[..., str],
    developer: Account,
) -> None:
    """A worker ending jobs locks their users' balances, then the job rows. Recovery ending a
    stalled job of the same user meanwhile waits for the balance before it locks the job, so
    the worker's transaction goes through; had it locked the job first, each would wait for
    the other and PostgreSQL would abort one as a deadlock (SQLite serializes transactions)."""
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serializes whole transactions")
    job_id = new_job(max_attempts=1)
    _claim(sessions, job_effects, "dead-worker", max_images=1)
    later = utcnow() + timedelta(seconds=LEASE + 1)
    recovered: list[str] = []
    failures: list[BaseException] = []

    def recover() -> None:
        try:
            with session_scope(sessions) as session:
                stalled = transitions.recover_stalled(
                    session, job_effects, retry_base_seconds=0, now=later
                )
                recovered.extend(job.id for job in stalled)
        except BaseException as exc:  # noqa: BLE001 - the test reports it below
            failures.append(exc)

    with session_scope(sessions) as worker:
        ledger.lock_balances(worker, [developer.user_id])
        recovery = threading.Thread(target=recover)
        recovery.start()
        recovery.join(timeout=1.5)  # it waits on the balance: past PostgreSQL's deadlock check
        assert recovery.is_alive()
        worker.execute(text("SET LOCAL lock_timeout = '5s'"))
        worker.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    recovery.join(timeout=10)
    assert failures == []
    assert recovered == [job_id]
    assert _job(sessions, job_id).status == JobStatus.failed


def test_cancel_ends_a_queued_job_at_once_and_flags_a_running_one(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    queued, running = new_job(), new_job(priority=1)
    (claim,) = _claim(sessions, job_effects)
    assert claim.job_id == running
    with session_scope(sessions) as session:
        assert transitions.request_cancel(session, queued, job_effects).status == JobStatus.canceled
        job = transitions.request_cancel(session, running, job_effects)
        assert job.status == JobStatus.running and job.cancel_requested
    with session_scope(sessions) as session:
        assert (
            transitions.confirm_canceled(session, claim, job_effects).status == JobStatus.canceled
        )
    with session_scope(sessions) as session, pytest.raises(ConflictError, match="already ended"):
        transitions.request_cancel(session, queued, job_effects)
    assert _claim(sessions, job_effects) == []


def test_a_released_job_goes_back_without_spending_an_attempt(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    (claim,) = _claim(sessions, job_effects)
    with session_scope(sessions) as session:
        assert transitions.release(session, claim, "worker stopping", job_effects)
    job = _job(sessions, job_id)
    assert (job.status, job.attempt, job.lease_owner) == (JobStatus.queued, 0, None)
    assert _claim(sessions, job_effects)[0].attempt == 1


def test_events_follow_the_jobs_life_in_order(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    job_id = new_job()
    (claim,) = _claim(sessions, job_effects)
    with session_scope(sessions) as session:
        lease.report(session, claim, [("progress", (1, 2)), ("progress", (2, 2))])
        lease.report(session, claim, [("log", "hello")])
        transitions.complete(session, claim, _done(), job_effects)
    with sessions() as session:
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
    assert [
        (e.type, e.data.get("status") or e.data.get("step") or e.data.get("message"))
        for e in events
    ] == [
        ("status", "queued"),
        ("status", "running"),
        ("progress", 1),
        ("progress", 2),
        ("log", "hello"),
        ("output", None),
        ("status", "succeeded"),
        ("done", "succeeded"),
    ]


def test_a_rolled_back_savepoint_keeps_the_transactions_earlier_events(
    sessions: sessionmaker[Session], developer: Account, catalog_model: Model
) -> None:
    with session_scope(sessions) as session:
        job = Job(user_id=developer.user_id, model_id=catalog_model.id, input={})
        transitions.enqueue(session, job)
        with pytest.raises(RuntimeError), session.begin_nested():
            raise RuntimeError("an inner step failed")
    with sessions() as session:
        kinds = session.scalars(select(JobEvent.type).where(JobEvent.job_id == job.id)).all()
    assert kinds == ["status"]


@pytest.mark.parametrize("how", ["retry", "release", "recover"])
def test_a_canceled_job_never_goes_back_to_the_queue(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str], how: str
) -> None:
    job_id = new_job(max_attempts=3)
    (claim,) = _claim(sessions, job_effects)
    with session_scope(sessions) as session:
        transitions.request_cancel(session, job_id, job_effects)
    with session_scope(sessions) as session:
        if how == "retry":
            transitions.fail(
                session, claim, "out of memory", job_effects, retryable=True, retry_base_seconds=0
            )
        elif how == "release":
            transitions.release(session, claim, "worker stopping", job_effects)
        else:
            later = utcnow() + timedelta(seconds=LEASE + 1)
            transitions.recover_stalled(session, job_effects, retry_base_seconds=0, now=later)
    assert _job(sessions, job_id).status == JobStatus.canceled
    assert _claim(sessions, job_effects) == []


def test_recovery_tells_users_what_happened_and_operators_which_worker(
    job_effects: JobEffects, sessions: sessionmaker[Session], new_job: Callable[..., str]
) -> None:
    job_id = new_job(max_attempts=1)
    _claim(sessions, job_effects, "host-42-abc")
    with session_scope(sessions) as session:
        transitions.recover_stalled(
            session, job_effects, retry_base_seconds=0, now=utcnow() + timedelta(hours=1)
        )
    job = _job(sessions, job_id)
    assert "host-42-abc" not in job.error and "host-42-abc" not in job.logs
    assert "stopped responding" in job.error
    assert "host-42-abc" in job.attempt_errors[0]["error"]

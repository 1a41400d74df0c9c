"""`goshen worker` processes: one registers and heartbeats, and on SIGTERM finishes its batch or
releases a job it cannot finish in its drain time; three finish 200 jobs while one of them is killed
with SIGKILL mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from goshen.db.models import (
    CreditBalance,
    CreditLedgerEntry,
    Job,
    JobStatus,
    LedgerEntryKind,
    Model,
    UsageEvent,
    Worker,
    WorkerStatus,
    utcnow,
)
from tests.fixtures.accounts import Account
from tests.serving.worker.jobs import has_ended, queue_jobs, wait_for


def _workers(sessions: sessionmaker[Session]) -> list[Worker]:
    with sessions() as session:
        return list(session.scalars(select(Worker)))


def _worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "GOSHEN_HOME": str(settings.home_dir),
        "GOSHEN_DATABASE_URL": settings.resolved_database_url,
        "GOSHEN_SECRET_KEY": settings.secret_key or "",
        "GOSHEN_MLFLOW_TRACKING_URI": settings.resolved_mlflow_tracking_uri,
        "GOSHEN_JOB_LEASE_SECONDS": str(settings.job_lease_seconds),
        "GOSHEN_QUEUE_RECOVERY_SECONDS": str(settings.queue_recovery_seconds),
        "GOSHEN_QUEUE_POLL_SECONDS": str(settings.queue_poll_seconds),
        "GOSHEN_JOB_RETRY_BASE_SECONDS": "0.1",
        "GOSHEN_WORKER_HEARTBEAT_SECONDS": "0.2",
        **extra,
    }


def _spawn(settings: Settings, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "goshen_launcher.cli", "worker"], env=_worker_env(settings, **extra)
    )


def test_worker_heartbeats_and_stops_on_sigterm(
    serving_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    worker = _spawn(serving_settings)
    try:
        deadline = time.monotonic() + 60
        while not (rows := _workers(sessions)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(rows) == 1, "the worker never registered"
        registered = rows[0]
        assert registered.pid == worker.pid and registered.device_name.startswith("cpu")
        assert registered.device_memory_bytes > 0
        time.sleep(1)
        assert _workers(sessions)[0].heartbeat_at > registered.heartbeat_at
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    assert _workers(sessions)[0].status == WorkerStatus.stopped


def test_on_sigterm_a_worker_releases_a_job_it_cannot_finish_in_its_drain_time(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
) -> None:
    (job_id,) = queue_jobs(
        sessions, developer, digits_model, num_images=16, num_inference_steps=200
    )
    worker = _spawn(serving_settings, GOSHEN_WORKER_DRAIN_SECONDS="0")
    try:
        wait_for(sessions, [job_id], lambda job: (job.progress or {}).get("step", 0) >= 1)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    with sessions() as session:
        job = session.get(Job, job_id)
        running = session.scalar(
            select(func.count()).select_from(Job).where(Job.status == JobStatus.running)
        )
    assert (job.status, job.attempt, job.lease_owner, running) == (JobStatus.queued, 0, None, 0)
    assert "released" in job.logs
    (row,) = _workers(sessions)
    assert row.status == WorkerStatus.stopped and row.loaded_models == []


def test_on_sigterm_a_worker_finishes_its_batch_within_its_drain_time(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
) -> None:
    ids = queue_jobs(sessions, developer, digits_model, 2, num_inference_steps=50)
    worker = _spawn(serving_settings, GOSHEN_WORKER_DRAIN_SECONDS="15")
    try:
        wait_for(sessions, ids[:1], lambda job: job.status != JobStatus.queued)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    with sessions() as session:
        statuses = [session.get(Job, job_id).status for job_id in ids]
    assert statuses == [JobStatus.succeeded] * 2  # one batch, finished, then the worker left
    assert _workers(sessions)[0].status == WorkerStatus.stopped


@pytest.mark.slow
def test_three_workers_finish_200_jobs_while_one_is_killed_mid_job(
    serving_settings: Settings,
    sessions: sessionmaker[Session],
    developer: Account,
    digits_model: Model,
) -> None:
    ids = queue_jobs(sessions, developer, digits_model, 200, num_inference_steps=20)
    workers = [_spawn(serving_settings, GOSHEN_WORKER_MAX_BATCH_SIZE="4") for _ in range(3)]
    try:
        victim = workers[0]

        def victim_holds_a_job(_: Job) -> bool:
            with sessions() as session:
                return bool(
                    session.scalar(
                        select(func.count())
                        .select_from(Job)
                        .where(
                            Job.status == JobStatus.running,
                            Job.lease_owner.contains(f"-{victim.pid}-"),
                        )
                    )
                )

        wait_for(sessions, ids[:1], victim_holds_a_job)
        victim.send_signal(signal.SIGKILL)
        killed_at = utcnow()
        victim.wait(timeout=10)
        jobs = wait_for(sessions, ids, has_ended, timeout=240)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(timeout=10)
    assert {job.status for job in jobs} == {JobStatus.succeeded}
    taken_over = [job for job in jobs if job.attempt >= 2]
    assert taken_over, "no job was taken from the killed worker"
    # Back in the queue once its lease ran out: within the lease TTL plus the recovery interval,
    # with slack for a shared 2-core machine under load (a CI run measured 9.2 s against 5.5),
    # far short of anything but lease expiry (a restart, the 240 s wait) taking it back.
    bound = serving_settings.job_lease_seconds + serving_settings.queue_recovery_seconds + 15
    for job in taken_over:
        recovered_at = datetime.fromisoformat(job.attempt_errors[0]["at"])
        assert (recovered_at - killed_at).total_seconds() <= bound
        assert "stopped renewing its lease" in job.attempt_errors[0]["error"]
    with sessions() as session:
        usage = session.execute(select(UsageEvent.job_id, func.count()).group_by(UsageEvent.job_id))
        counts = dict(usage.all())
    assert counts == {job_id: 1 for job_id in ids}
    _assert_charged_once(sessions, developer, jobs, serving_settings.new_user_credits_micros)
    for job in jobs:
        assert len(job.output["images"]) == 1
        folder = serving_settings.artifacts_dir / "outputs" / developer.user_id / job.id
        files = [path.relative_to(folder).as_posix() for path in folder.rglob("*.png")]
        assert files == [f"{job.attempt}/0.png"]  # what earlier attempts wrote is gone


def _assert_charged_once(
    sessions: sessionmaker[Session], account: Account, jobs: list[Job], granted: int
) -> None:
    """Every job captured once, for its cost; no hold left open; the ledger sums to the cached
    balance, which is what was granted less what the jobs cost."""
    entry = CreditLedgerEntry
    with sessions() as session:
        captures = session.execute(
            select(entry.job_id, func.count(), func.sum(entry.amount_micros))
            .where(entry.kind == LedgerEntryKind.capture)
            .group_by(entry.job_id)
        ).all()
        total, held = session.execute(
            select(func.sum(entry.amount_micros), func.sum(entry.held_micros)).where(
                entry.user_id == account.user_id
            )
        ).one()
        cached = session.get(CreditBalance, account.user_id)
    costs = {job.id: job.cost_micros for job in jobs}
    assert {job_id: (count, -amount) for job_id, count, amount in captures} == {
        job_id: (1, cost) for job_id, cost in costs.items()
    }
    assert all(costs.values()) and (total, held) == (granted - sum(costs.values()), 0)
    assert cached is not None and (cached.balance_micros, cached.held_micros) == (total, held)

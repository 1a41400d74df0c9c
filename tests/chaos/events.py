"""The faults: a worker killed mid-job (SIGKILL), a worker frozen (SIGSTOP) until others have taken
its jobs over by lease expiry, and the database restarted. Each waits for a worker that holds
running jobs, so it strikes work in progress, and records what it struck."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from goshen.db.models import Job, JobStatus
from tests.chaos.processes import Platform, Process
from tests.fixtures.private_postgres import PrivateCluster

TERMINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


@dataclass
class ChaosRecord:
    """What the faults struck, for the invariants and the write-up."""

    kills: list[dict[str, Any]] = field(default_factory=list)
    freezes: list[dict[str, Any]] = field(default_factory=list)
    restarts: list[dict[str, Any]] = field(default_factory=list)


def _running_jobs(sessions: sessionmaker[Session]) -> list[tuple[str, str, int]]:
    """(job id, lease owner, attempt) of every running job."""
    with sessions() as session:
        rows = session.execute(
            select(Job.id, Job.lease_owner, Job.attempt).where(Job.status == JobStatus.running)
        ).all()
    return [(job_id, owner or "", attempt) for job_id, owner, attempt in rows]


def _unfinished(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(Job).where(Job.status.not_in(TERMINAL)))
            or 0
        )


def busy_worker(
    platform: Platform,
    sessions: sessionmaker[Session],
    submitting: Callable[[], bool],
    timeout: float = 120,
) -> tuple[Process, dict[str, int]]:
    """A live worker that holds running jobs, with those jobs' attempts by id. Lease owners name
    the worker's pid (serving.worker.loop.new_worker_id)."""
    deadline = time.monotonic() + timeout
    while True:
        running = _running_jobs(sessions)
        for worker in platform.workers():
            held = {job: attempt for job, owner, attempt in running if f"-{worker.pid}-" in owner}
            if held:
                return worker, held
        assert time.monotonic() < deadline, "no worker took a job in time"
        assert running or submitting() or _unfinished(sessions), (
            "the queue drained before the faults were done: the run needs more (or longer) jobs"
        )
        time.sleep(0.02)


def kill_worker(
    platform: Platform,
    sessions: sessionmaker[Session],
    submitting: Callable[[], bool],
    record: ChaosRecord,
) -> None:
    """SIGKILL a worker mid-job, and start another in its place."""
    victim, held = busy_worker(platform, sessions, submitting)
    victim.signal(signal.SIGKILL)
    victim.popen.wait(timeout=30)
    platform.start("worker")
    record.kills.append({"pid": victim.pid, "jobs": sorted(held), "at": time.time()})


def freeze_worker(
    platform: Platform,
    sessions: sessionmaker[Session],
    submitting: Callable[[], bool],
    record: ChaosRecord,
    timeout: float = 120,
) -> None:
    """SIGSTOP a worker mid-job until every job it held has been taken from it by another
    worker's recovery (its lease ran out) or has ended; then SIGCONT, so it wakes up holding
    stale claims. (Waiting for the jobs to be claimed again would wait for the queue ahead of
    them: a recovered job goes back with a backoff, behind the jobs already queued.)"""
    victim, held = busy_worker(platform, sessions, submitting)
    victim.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    taken: dict[str, str] = {}
    try:
        while len(taken) < len(held):
            with sessions() as session:
                rows = session.execute(
                    select(Job.id, Job.status, Job.lease_owner).where(Job.id.in_(list(held)))
                ).all()
            for job_id, status, owner in rows:
                recovered = f"-{victim.pid}-" not in (owner or "")
                if recovered or status in TERMINAL:
                    taken[job_id] = status
            assert time.monotonic() - frozen_at < timeout, (
                f"the frozen worker's jobs were not taken over in {timeout} s: "
                f"{sorted(set(held) - set(taken))}"
            )
            time.sleep(0.05)
    finally:
        frozen_for = time.monotonic() - frozen_at
        victim.signal(signal.SIGCONT)
    record.freezes.append(
        {
            "pid": victim.pid,
            "jobs": sorted(held),
            "taken_over": sum(1 for status in taken.values() if status not in TERMINAL),
            "ended_before_takeover": sum(1 for status in taken.values() if status in TERMINAL),
            "frozen_seconds": round(frozen_for, 2),
        }
    )


def restart_database(
    platform: Platform,
    sessions: sessionmaker[Session],
    cluster: PrivateCluster,
    submitting: Callable[[], bool],
    record: ChaosRecord,
) -> None:
    """Restart PostgreSQL (fast shutdown: every connection dropped) while workers hold jobs."""
    _, held = busy_worker(platform, sessions, submitting)
    downtime = cluster.restart("fast")
    record.restarts.append({"jobs_running": len(held), "downtime_seconds": round(downtime, 2)})


def unleash(
    plan: list[str],
    platform: Platform,
    sessions: sessionmaker[Session],
    cluster: PrivateCluster,
    submitting: Callable[[], bool],
    pause: float,
) -> ChaosRecord:
    """Run the faults of `plan` ("kill", "freeze", "restart") in order, `pause` s apart, while
    `submitting()` or jobs remain (else the plan fails: the run was too short for it)."""
    record = ChaosRecord()
    for fault in plan:
        started = time.monotonic()
        if fault == "kill":
            kill_worker(platform, sessions, submitting, record)
        elif fault == "freeze":
            freeze_worker(platform, sessions, submitting, record)
        elif fault == "restart":
            restart_database(platform, sessions, cluster, submitting, record)
        else:
            raise ValueError(f"unknown fault {fault!r}")
        print(f"chaos: {fault} done in {time.monotonic() - started:.1f} s", flush=True)
        time.sleep(pause)
    return record

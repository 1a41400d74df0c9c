"""When a failed attempt runs again: exponential backoff with jitter, and the requeue itself.

A dependency outage (the MLflow registry or the artifact store not answering) spends none of a
job's GOSHEN_JOB_MAX_ATTEMPTS: a restart of MLflow must not fail customers' jobs. It is bounded
all the same: the job waits base·2^(k-1) after its k-th outage, at most OUTAGE_DELAY_CAP_SECONDS
before the jitter (so it runs soon after the dependency is back), for up to OUTAGE_RETRIES
outages (about six to nine minutes with the default base of 2 s); past them an outage spends
attempts like any failure.
"""

from __future__ import annotations

import math
import random
from datetime import datetime

from goshen.db.models import Job, JobStatus

OUTAGE_RETRIES = 10
OUTAGE_DELAY_CAP_SECONDS = 60.0


def retry_delay(
    attempt: int,
    base_seconds: float,
    rng: random.Random | None = None,
    *,
    cap_seconds: float = math.inf,
) -> float:
    """Seconds before retry `attempt` (1 = the first): base·2^(attempt-1), at most
    `cap_seconds`, times 1 to 1.5."""
    delay = min(base_seconds * 2.0 ** (attempt - 1), cap_seconds)
    return delay * (rng or random).uniform(1.0, 1.5)


def outage_delay(outage: int, base_seconds: float, rng: random.Random | None = None) -> float:
    """Seconds before a job runs again after its `outage`-th dependency outage (1 = the first)."""
    return retry_delay(outage, base_seconds, rng, cap_seconds=OUTAGE_DELAY_CAP_SECONDS)


def requeue(job: Job, run_after: datetime) -> None:
    """Put a locked job back in the queue, runnable from `run_after`, its claim dropped."""
    job.status = JobStatus.queued
    job.run_after = run_after
    job.claim_token = None
    job.lease_owner = None
    job.lease_expires_at = None
    job.progress = None

"""When a failed attempt runs again: exponential backoff with jitter, and the requeue itself."""

from __future__ import annotations

import random
from datetime import datetime

from goshen.db.models import Job, JobStatus


def retry_delay(attempt: int, base_seconds: float, rng: random.Random | None = None) -> float:
    """Seconds before retry `attempt` (1 = the first): base·2^(attempt-1), times 1 to 1.5."""
    return base_seconds * 2.0 ** (attempt - 1) * (rng or random).uniform(1.0, 1.5)


def requeue(job: Job, run_after: datetime) -> None:
    """Put a locked job back in the queue, runnable from `run_after`, its claim dropped."""
    job.status = JobStatus.queued
    job.run_after = run_after
    job.claim_token = None
    job.lease_owner = None
    job.lease_expires_at = None
    job.progress = None

"""Admin views of jobs: what the owner sees plus the queue state operators need."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from serving.schemas import JobPublic

MAX_ADMIN_JOB_EVENTS = 500


class AdminJobPublic(JobPublic):
    """A job as its owner sees it, with its owner, key, model and queue state."""

    user_id: str
    api_key_id: str | None
    model_id: str
    attempt: int = Field(description="attempts started so far")
    max_attempts: int
    priority: int
    run_after: datetime = Field(description="when the queue may next claim it")
    lease_owner: str | None = Field(description="the worker holding it, while running")
    lease_expires_at: datetime | None


class AdminJobEvent(BaseModel):
    id: int
    type: str = Field(description="status, progress, log, output or done")
    data: dict[str, Any]
    created_at: datetime


class AdminJobDetail(AdminJobPublic):
    """A job with its event timeline and every failed attempt's error."""

    attempt_errors: list[Any]
    events: list[AdminJobEvent] = Field(
        description=f"its events, oldest first: the last {MAX_ADMIN_JOB_EVENTS} at most"
    )
    events_truncated: bool = Field(
        description=f"true when the job has more than {MAX_ADMIN_JOB_EVENTS} events and the "
        "oldest are left out"
    )

"""Jobs: generation and prediction requests, their queue state and their event streams."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from goshen.db.models.base import Base, JSONType, created_at_column, enum_type, id_column, utcnow

# A request id is at most this long (serving.http.request_ids refuses longer ones); a
# traceparent of version 00 is 55 characters, later versions may add fields.
REQUEST_ID_MAX_LENGTH = 128
TRACEPARENT_MAX_LENGTH = 128


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


class Job(Base):
    """A generation or prediction request and its queue state."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key"),
        # Stalled-job recovery: running jobs whose lease ran out.
        Index(
            "ix_jobs_lease_expiry",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
        # Newest-first lists by owner, status or model (ids are time-ordered).
        Index("ix_jobs_user_created", "user_id", "id"),
        Index("ix_jobs_status_created", "status", "id"),
        Index("ix_jobs_model_created", "model_id", "id"),
        Index("ix_jobs_completed_at", "completed_at"),
    )

    id: Mapped[str] = id_column("job")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    model_version: Mapped[str | None] = mapped_column(String(40))
    input: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Jobs of one model with the same batch key may run as one batch (same steps, size, ...).
    batch_key: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[JobStatus] = mapped_column(enum_type(JobStatus), default=JobStatus.queued)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    timeout_seconds: Mapped[float | None] = mapped_column(Float)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None]
    claim_token: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    logs: Mapped[str] = mapped_column(Text, default="")
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    attempt_errors: Mapped[list[Any]] = mapped_column(default=list)
    webhook: Mapped[str | None] = mapped_column(String(2048))
    webhook_events: Mapped[list[Any]] = mapped_column(default=list)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # The X-Request-Id of the request that submitted it and the W3C traceparent of its submit
    # span: the worker's and the webhook dispatcher's log lines and spans join the API's.
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX_LENGTH))
    traceparent: Mapped[str | None] = mapped_column(String(TRACEPARENT_MAX_LENGTH))
    created_at: Mapped[datetime] = created_at_column()
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    queue_seconds: Mapped[float | None] = mapped_column(Float)
    run_seconds: Mapped[float | None] = mapped_column(Float)
    device: Mapped[str | None] = mapped_column(String(200))
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cost_micros: Mapped[int | None] = mapped_column(BigInteger)


# The claim query: the oldest runnable job of the highest priority, in the claim's own order
# (serving.jobs.claim), so a claim reads the queue's head instead of sorting the whole queue.
Index(
    "ix_jobs_claim_order",
    Job.priority.desc(),
    Job.run_after,
    Job.id,
    postgresql_where=text("status = 'queued'"),
    sqlite_where=text("status = 'queued'"),
)


class JobEvent(Base):
    """A job's event stream (status, progress, log, output, done), in commit order per job.

    Writers lock the job row before inserting, so within one job ids grow in commit order and a
    reader resuming after id N misses nothing.
    """

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(20))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = created_at_column()

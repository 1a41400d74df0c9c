"""The platform database: every table of the data model in DESIGN.md.

Money is stored as integer micro-credits (1 credit = 1_000_000) so sums are exact on every backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from goshen.ids import new_id

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


def _id_column(kind: str) -> Mapped[str]:
    return mapped_column(String(40), primary_key=True, default=lambda: new_id(kind))


def _created_at() -> Mapped[datetime]:
    return mapped_column(default=utcnow)


def _enum(enum: type[StrEnum]) -> String:
    """Enums are plain strings in the database so new values need no ALTER TYPE."""
    return String(max(len(member.value) for member in enum) + 8)


class Role(StrEnum):
    admin = "admin"
    developer = "developer"


class ModelKind(StrEnum):
    diffusion = "diffusion"
    onnx = "onnx"


class ModelRuntime(StrEnum):
    """What runs a catalog entry, which also fixes its input schema."""

    onnx_diffusion = "onnx-diffusion"  # the platform's class-conditional UNet, exported to ONNX
    diffusers = "diffusers"  # a diffusers Stable-Diffusion-family pipeline folder
    onnx = "onnx"  # an ONNX graph served by /predict


class PricingUnit(StrEnum):
    image = "image"
    second = "second"
    request = "request"


class Visibility(StrEnum):
    public = "public"
    private = "private"


class ModelStatus(StrEnum):
    deploying = "deploying"
    ready = "ready"
    failed = "failed"
    disabled = "disabled"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


class LedgerEntryKind(StrEnum):
    grant = "grant"
    hold = "hold"
    capture = "capture"
    release = "release"
    adjustment = "adjustment"


class DatasetKind(StrEnum):
    images = "images"
    tabular = "tabular"


class DatasetStatus(StrEnum):
    uploaded = "uploaded"
    validating = "validating"
    ready = "ready"
    failed = "failed"


class TrainingStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class WorkerStatus(StrEnum):
    idle = "idle"
    busy = "busy"
    draining = "draining"
    stopped = "stopped"


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = _id_column("usr")
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[Role] = mapped_column(_enum(Role), default=Role.developer)
    created_at: Mapped[datetime] = _created_at()
    disabled_at: Mapped[datetime | None]
    # Signs this user's webhooks (Standard Webhooks `whsec_...`); made on first use.
    webhook_secret: Mapped[str | None] = mapped_column(String(64))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = _id_column("key")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    last4: Mapped[str] = mapped_column(String(4))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = _created_at()
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Model(Base):
    """A catalog entry: what developers call, backed by an MLflow registered model."""

    __tablename__ = "models"

    id: Mapped[str] = _id_column("mdl")
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[ModelKind] = mapped_column(_enum(ModelKind))
    runtime: Mapped[ModelRuntime] = mapped_column(_enum(ModelRuntime))
    description: Mapped[str] = mapped_column(Text, default="")
    registered_model: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str | None] = mapped_column(String(100))
    pinned_version: Mapped[str | None] = mapped_column(String(40))
    live_version: Mapped[str | None] = mapped_column(String(40))
    previous_version: Mapped[str | None] = mapped_column(String(40))
    input_schema: Mapped[dict[str, Any]] = mapped_column(default=dict)
    examples: Mapped[list[Any]] = mapped_column(default=list)
    pricing_unit: Mapped[PricingUnit] = mapped_column(_enum(PricingUnit))
    price_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    visibility: Mapped[Visibility] = mapped_column(_enum(Visibility), default=Visibility.private)
    status: Mapped[ModelStatus] = mapped_column(_enum(ModelStatus), default=ModelStatus.deploying)
    status_error: Mapped[str | None] = mapped_column(Text)
    # Dynamic batching of /predict; None means the GOSHEN_PREDICT_* defaults.
    max_batch_size: Mapped[int | None] = mapped_column(Integer)
    max_wait_ms: Mapped[float | None] = mapped_column(Float)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Job(Base):
    """A generation or prediction request and its queue state."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key"),
        # The claim query: the oldest runnable job of the highest priority.
        Index(
            "ix_jobs_claimable",
            "priority",
            "run_after",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        # Stalled-job recovery: running jobs whose lease ran out.
        Index(
            "ix_jobs_lease_expiry",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
        Index("ix_jobs_user_created", "user_id", "id"),
    )

    id: Mapped[str] = _id_column("job")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    model_version: Mapped[str | None] = mapped_column(String(40))
    input: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Jobs of one model with the same batch key may run as one batch (same steps, size, ...).
    batch_key: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.queued)
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
    created_at: Mapped[datetime] = _created_at()
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    queue_seconds: Mapped[float | None] = mapped_column(Float)
    run_seconds: Mapped[float | None] = mapped_column(Float)
    device: Mapped[str | None] = mapped_column(String(200))
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cost_micros: Mapped[int | None] = mapped_column(BigInteger)


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
    created_at: Mapped[datetime] = _created_at()


class UsageEvent(Base):
    """Append-only metering: one row per (job, kind), or per synchronous request."""

    __tablename__ = "usage_events"
    __table_args__ = (
        UniqueConstraint("job_id", "kind"),
        Index("ix_usage_events_user_created", "user_id", "created_at"),
    )

    id: Mapped[str] = _id_column("use")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(40))
    quantity: Mapped[float] = mapped_column(Float)
    unit: Mapped[PricingUnit] = mapped_column(_enum(PricingUnit))
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # What was consumed, whatever the pricing unit: images made and compute seconds.
    images: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = _created_at()


class CreditLedgerEntry(Base):
    """Append-only credit ledger; a user's balance is the sum of their entries."""

    __tablename__ = "credit_ledger"
    __table_args__ = (
        # Holds, captures and releases are keyed by job so a retried job moves credit once.
        UniqueConstraint("job_id", "kind"),
        Index("ix_credit_ledger_user_created", "user_id", "created_at"),
    )

    id: Mapped[str] = _id_column("led")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    kind: Mapped[LedgerEntryKind] = mapped_column(_enum(LedgerEntryKind))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    memo: Mapped[str] = mapped_column(String(500), default="")
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _created_at()


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_user_created", "user_id", "id"),)

    id: Mapped[str] = _id_column("ds")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[DatasetKind] = mapped_column(_enum(DatasetKind))
    status: Mapped[DatasetStatus] = mapped_column(
        _enum(DatasetStatus), default=DatasetStatus.uploaded
    )
    storage_prefix: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    schema: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (Index("ix_training_jobs_user_created", "user_id", "id"),)

    id: Mapped[str] = _id_column("trn")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    task: Mapped[str] = mapped_column(String(40))
    model_name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[TrainingStatus] = mapped_column(
        _enum(TrainingStatus), default=TrainingStatus.queued
    )
    dagster_run_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    registered_model: Mapped[str | None] = mapped_column(String(200))
    registered_version: Mapped[str | None] = mapped_column(String(40))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    logs: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    estimated_cost_micros: Mapped[int | None] = mapped_column(BigInteger)
    gpu_seconds: Mapped[float | None] = mapped_column(Float)
    cost_micros: Mapped[int | None] = mapped_column(BigInteger)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _created_at()
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """The webhook outbox: one row per (job, event type), retried until delivered or given up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", "event_type"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[str] = _id_column("whd")
    event_id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("msg"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus), default=DeliveryStatus.pending
    )
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    delivered_at: Mapped[datetime | None]


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device_name: Mapped[str] = mapped_column(String(200))
    device_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    loaded_models: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[WorkerStatus] = mapped_column(_enum(WorkerStatus), default=WorkerStatus.idle)
    started_at: Mapped[datetime] = _created_at()
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

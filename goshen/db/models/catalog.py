"""The model catalog: what developers call, how it runs, is priced and who may see it."""

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
)
from sqlalchemy.orm import Mapped, mapped_column

from goshen.db.models.base import Base, JSONType, created_at_column, enum_type, id_column, utcnow


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


class Model(Base):
    """A catalog entry: what developers call, backed by an MLflow registered model.

    Entries owned by a user (the models their training jobs made) are named
    `<user id>.<model name>`, as their registered model is; public and admin entries have plain
    names, so the two name spaces never meet (goshen.catalog.candidate_names).
    """

    __tablename__ = "models"
    __table_args__ = (Index("ix_models_owner_id", "owner_id", "id"),)

    id: Mapped[str] = id_column("mdl")
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[ModelKind] = mapped_column(enum_type(ModelKind))
    runtime: Mapped[ModelRuntime] = mapped_column(enum_type(ModelRuntime))
    description: Mapped[str] = mapped_column(Text, default="")
    registered_model: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str | None] = mapped_column(String(100))
    pinned_version: Mapped[str | None] = mapped_column(String(40))
    live_version: Mapped[str | None] = mapped_column(String(40))
    previous_version: Mapped[str | None] = mapped_column(String(40))
    input_schema: Mapped[dict[str, Any]] = mapped_column(default=dict)
    examples: Mapped[list[Any]] = mapped_column(default=list)
    pricing_unit: Mapped[PricingUnit] = mapped_column(enum_type(PricingUnit))
    price_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    visibility: Mapped[Visibility] = mapped_column(
        enum_type(Visibility), default=Visibility.private
    )
    status: Mapped[ModelStatus] = mapped_column(
        enum_type(ModelStatus), default=ModelStatus.deploying
    )
    status_error: Mapped[str | None] = mapped_column(Text)
    # Dynamic batching of /predict; None means the GOSHEN_PREDICT_* defaults.
    max_batch_size: Mapped[int | None] = mapped_column(Integer)
    max_wait_ms: Mapped[float | None] = mapped_column(Float)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # A trained generator's class names, by class index, at the version it serves.
    classes: Mapped[list[str] | None] = mapped_column(JSONType)
    # Deleted by its owner: hidden everywhere, its name freed; jobs keep pointing at it.
    deleted_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ModelVersion(Base):
    """A registered version of a catalog entry, as the platform recorded it: what it was trained
    on, how it measured, whether its checks passed. MLflow holds its files."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[str] = id_column("mv")
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(40))
    classes: Mapped[list[str] | None] = mapped_column(JSONType)
    image_size: Mapped[int | None] = mapped_column(Integer)
    # What the entry publishes while it serves this version (None: its runtime's own schema).
    input_schema: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    examples: Mapped[list[Any] | None] = mapped_column(JSONType)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metric_name: Mapped[str | None] = mapped_column(String(100))
    checks_passed: Mapped[bool | None] = mapped_column(Boolean)
    training_job_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL")
    )
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(40), default="training")
    created_at: Mapped[datetime] = created_at_column()

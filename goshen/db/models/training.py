"""Training jobs: a model trained on a dataset, run by Dagster and tracked in MLflow."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from goshen.db.models.base import Base, JSONType, created_at_column, enum_type, id_column


class TrainingStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


class DeployPolicy(StrEnum):
    """What a succeeded job's version does to its model's live version."""

    auto = "auto"  # becomes live when its checks pass and its metric is not worse
    pin = "pin"  # becomes live, pinned, when its checks pass, whatever its metric
    none = "none"  # registered only; its owner deploys it when they choose


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (Index("ix_training_jobs_user_created", "user_id", "id"),)

    id: Mapped[str] = id_column("trn")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    task: Mapped[str] = mapped_column(String(40))
    model_name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    deploy: Mapped[DeployPolicy] = mapped_column(
        enum_type(DeployPolicy), default=DeployPolicy.auto, server_default=DeployPolicy.auto
    )
    status: Mapped[TrainingStatus] = mapped_column(
        enum_type(TrainingStatus), default=TrainingStatus.queued
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
    created_at: Mapped[datetime] = created_at_column()
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]

"""Datasets users upload: what they hold, where they are stored, whether they are ready."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from goshen.db.models.base import Base, JSONType, created_at_column, enum_type, id_column, utcnow


class DatasetKind(StrEnum):
    images = "images"
    tabular = "tabular"


class DatasetStatus(StrEnum):
    uploaded = "uploaded"
    validating = "validating"
    ready = "ready"
    failed = "failed"


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_user_created", "user_id", "id"),)

    id: Mapped[str] = id_column("ds")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[DatasetKind] = mapped_column(enum_type(DatasetKind))
    status: Mapped[DatasetStatus] = mapped_column(
        enum_type(DatasetStatus), default=DatasetStatus.uploaded
    )
    storage_prefix: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    schema: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    # While it ingests: what is done so far ({"stage", "done", "total", "unit", "percent"}).
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

"""GPU workers: where each runs, what it has loaded, and its heartbeat."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from goshen.db.models.base import Base, created_at_column, enum_type, utcnow


class WorkerStatus(StrEnum):
    idle = "idle"
    busy = "busy"
    draining = "draining"
    stopped = "stopped"
    # A dependency it needs (the MLflow registry, the artifact store) does not answer; the
    # worker's status_detail names it. It still runs jobs that do not need it.
    unhealthy = "unhealthy"


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device_name: Mapped[str] = mapped_column(String(200))
    device_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Where it computes ("cuda:0", "cpu") and how much memory it uses now: CUDA's allocator
    # on a GPU, else the process's resident set. Both come with every heartbeat.
    device: Mapped[str | None] = mapped_column(String(50))
    memory_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # `{model, model_id, version}` per loaded generator: claims prefer jobs for these models.
    loaded_models: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[WorkerStatus] = mapped_column(enum_type(WorkerStatus), default=WorkerStatus.idle)
    status_detail: Mapped[str | None] = mapped_column(Text)  # why it is unhealthy
    started_at: Mapped[datetime] = created_at_column()
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

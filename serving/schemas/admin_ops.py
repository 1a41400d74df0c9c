"""Bodies of the admin operations routes: workers, platform stats, every user's datasets and
training jobs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from goshen.db.models import WorkerStatus
from serving.schemas import PublicBody
from serving.schemas.datasets import DatasetPublic
from serving.schemas.training import TrainingJobPublic


class WorkerJob(BaseModel):
    """A job a worker runs now: it holds the job's lease."""

    id: str
    model: str = Field(description="the catalog name of the job's model")


class WorkerPublic(PublicBody):
    id: str
    host: str
    pid: int
    device_name: str
    device_memory_bytes: int | None = Field(description="the device's total memory")
    device: str | None = Field(
        description='where it computes: "cuda:N" (the GPU it is pinned to) or "cpu"; null for '
        "workers that started before devices were reported"
    )
    memory_used_bytes: int | None = Field(
        description="memory it uses now, as of its last heartbeat: CUDA's allocated memory on "
        "a GPU, else the process's resident memory"
    )
    loaded_models: list[dict[str, Any]] = Field(
        description="the models it has loaded, as `{model, model_id, version}`: it takes queued "
        "jobs for these first (GOSHEN_WORKER_AFFINITY_SECONDS)"
    )
    status: WorkerStatus = Field(
        description="as the worker last reported it: idle, busy, draining, stopped, or unhealthy "
        "(`status_detail` names the dependency that does not answer)"
    )
    status_detail: str | None
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_seconds: float = Field(description="seconds since its last heartbeat")
    stale: bool = Field(
        description="a worker not stopped whose last heartbeat is older than "
        "`stale_after_seconds`: dead, hung or cut off from the database"
    )
    running_jobs: list[WorkerJob] = Field(description="the jobs it runs now: its current batch")


class WorkerList(BaseModel):
    data: list[WorkerPublic] = Field(description="most recent heartbeat first")
    has_more: bool = Field(description="more workers match than `limit`")
    stale_after_seconds: float = Field(
        description="3 heartbeat intervals (GOSHEN_WORKER_HEARTBEAT_SECONDS): a worker silent "
        "for longer is stale"
    )


class StatsWindow(StrEnum):
    m5 = "5m"
    m15 = "15m"
    h1 = "1h"
    h6 = "6h"
    h24 = "24h"
    d7 = "7d"


class Percentiles(BaseModel):
    count: int = Field(description="the values they are computed over")
    p50: float | None = Field(description="null without values")
    p95: float | None = Field(description="null without values")


class PredictionStats(BaseModel):
    count: int = Field(description="prediction requests metered in the window")
    per_minute: float
    p95_seconds: float | None = Field(
        description="95th percentile of a request's model seconds (its share of the batched "
        "model call, as metered), over the window's most recent 10,000 requests; null without any"
    )


class SpendStats(BaseModel):
    """Sums of metered usage cost, in micro-credits."""

    window_micros: int
    today_micros: int = Field(description="since 00:00 UTC today")
    month_micros: int = Field(description="since the first of this month, UTC")


class StatsBucket(BaseModel):
    """One slice of the window: what was submitted and metered in it."""

    start: datetime
    jobs: int = Field(description="generation jobs created in the slice, whatever their status")
    images: int = Field(description="images metered in the slice")
    predictions: int = Field(description="prediction requests metered in the slice")
    cost_micros: int = Field(description="what the slice's usage cost")


class AdminStats(BaseModel):
    window: StatsWindow
    start: datetime = Field(description="the window's start: `end` less the window")
    end: datetime = Field(description="when these figures were read")
    jobs_by_status: dict[str, int] = Field(
        description="jobs created in the window, by their status now (every status, 0 included)"
    )
    queued: int = Field(description="jobs queued now, whenever created")
    queued_by_model: dict[str, int] = Field(
        description="jobs queued now by model name (models with none left out)"
    )
    queue_seconds: Percentiles = Field(
        description="seconds from submission to a worker's claim, of jobs completed in the "
        "window (their most recent 10,000)"
    )
    run_seconds: Percentiles = Field(
        description="seconds from claim to end, of jobs completed in the window (their most "
        "recent 10,000)"
    )
    images_per_minute: float = Field(description="images generated (metered) per minute")
    predictions: PredictionStats
    spend: SpendStats
    workers_alive: int = Field(description="workers not stopped and not stale")
    models_deployed: int = Field(description="catalog entries that are `ready`")
    series: list[StatsBucket] = Field(
        description="the window in 60 equal slices, oldest first, for charts"
    )


class AdminDatasetPublic(DatasetPublic):
    user_id: str = Field(description="the owner")


class AdminTrainingJobPublic(TrainingJobPublic):
    user_id: str = Field(description="the owner")

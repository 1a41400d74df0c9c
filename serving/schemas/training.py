"""Bodies of the training-job routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from goshen.db.models import DeployPolicy, TrainingStatus
from goshen.ids import id_pattern
from goshen.training import Task, TrainingConfig
from serving.schemas import PlainName, PublicBody, RequestBody


class TrainingJobCreate(RequestBody):
    dataset_id: Annotated[str, StringConstraints(pattern=id_pattern("ds"))]
    task: Task
    model_name: PlainName = Field(
        description="your name for the model: you call it by this name (others cannot see it)"
    )
    config: TrainingConfig = Field(default_factory=TrainingConfig)
    deploy: DeployPolicy = Field(
        default=DeployPolicy.auto,
        description="auto: the new version serves when its checks pass and its metric is not "
        "worse than the live version's (a model's first version serves at once); pin: it "
        "serves, pinned, when its checks pass, whatever its metric; none: registered only",
    )


class TrainingJobLinks(BaseModel):
    """Where to look further: the API's own pages, and the Dagster and MLflow UIs."""

    dataset: str | None = Field(description="GET this for the dataset it trained on")
    model: str | None = Field(description="GET this for the model (once a version exists)")
    model_versions: str | None = Field(description="GET this for the model's versions")
    dagster_run: str | None = Field(description="the run in the Dagster UI")
    mlflow_run: str | None = Field(description="the run in the MLflow UI: params, metrics")
    mlflow_model_version: str | None = Field(description="the version in the MLflow registry")


class TrainingJobPublic(PublicBody):
    id: str
    dataset_id: str | None
    task: str
    model_name: str
    deploy: DeployPolicy
    config: dict[str, Any]
    status: TrainingStatus
    progress: dict[str, Any] | None
    error: str | None
    dagster_run_id: str | None
    mlflow_run_id: str | None
    registered_model: str | None
    registered_version: str | None
    estimated_cost_micros: int | None
    run_seconds: float | None = Field(
        default=None,
        description="seconds its run took, from claiming the job to its end, on whatever "
        "device it trained on (GPU or CPU): what it is charged by",
    )
    gpu_seconds: float | None = Field(
        description="the same seconds as `run_seconds`, under the name the API first gave them "
        "(they are CPU seconds on a machine without a GPU)"
    )
    cost_micros: int | None = Field(description="what it was charged, as the ledger captured")
    links: TrainingJobLinks | None = None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None

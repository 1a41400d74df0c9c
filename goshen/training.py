"""Training jobs: what a request may ask for, what it may cost, and its state changes.

The API writes a `queued` row; a Dagster sensor launches one run per row; the run reports
progress, logs and its outcome back to the row through these functions. `finish` is the one
place a job's end is decided: what it cost is settled there (goshen.billing.training_charges).

A job's time limit is its estimate (seconds per sample and epoch, measured on the digits
models, times samples and epochs) twice over, plus a startup allowance (loading data, the MLflow
run, ONNX export and checks). What is held at submit, `estimated_cost_micros`, is that limit at
the training price: the most the job can cost, since a run past its limit is stopped and failed.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from goshen import catalog
from goshen.billing import training_charges
from goshen.db import access
from goshen.db.models import (
    Dataset,
    DatasetKind,
    DatasetStatus,
    DeployPolicy,
    Model,
    ModelRuntime,
    TrainingJob,
    TrainingStatus,
    User,
    Visibility,
    utcnow,
)
from goshen.errors import ConflictError, InvalidInputError, NotFoundError
from goshen.text import ONE_LINE

MAX_EPOCHS = 200
MAX_BATCH_SIZE = 1024
ImageSize = Literal[8, 16, 32, 64]
IMAGE_SIZES: tuple[int, ...] = get_args(ImageSize)
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
TERMINAL = (TrainingStatus.succeeded, TrainingStatus.failed, TrainingStatus.canceled)
# Rough CPU cost per sample and epoch, measured on the digits models (BENCHMARKS.md).
SECONDS_PER_SAMPLE_EPOCH = {"diffusion": 0.004, "classification": 0.0002, "regression": 0.0002}
# Room for an estimate that is off (a slower machine, a busy one) and for the run's fixed costs.
TIME_LIMIT_FACTOR = 2
STARTUP_SECONDS = 300


class Task(StrEnum):
    diffusion = "diffusion"
    classification = "classification"
    regression = "regression"

    @property
    def dataset_kind(self) -> DatasetKind:
        return DatasetKind.images if self is Task.diffusion else DatasetKind.tabular


class TrainingConfig(BaseModel):
    """Hyperparameters a training job may set; everything is bounded."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=20, strict=True, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(default=64, strict=True, ge=1, le=MAX_BATCH_SIZE)
    learning_rate: float = Field(default=1e-3, strict=True, gt=0, le=1)
    image_size: ImageSize = Field(default=16, description="diffusion only: the side in pixels")
    seed: int = Field(default=0, strict=True, ge=0, le=2**31 - 1)
    target: Annotated[str, StringConstraints(max_length=200), ONE_LINE] | None = Field(
        default=None, description="tables: target column"
    )


def registered_model_name(user_id: str, model_name: str) -> str:
    """Users share one MLflow registry; their models are named per user so they never collide
    (and the catalog names their entries the same way)."""
    return catalog.owned_name(user_id, model_name)


def estimate_seconds(task: Task, config: TrainingConfig, samples: int) -> float:
    return SECONDS_PER_SAMPLE_EPOCH[task] * max(samples, 1) * config.epochs


def time_limit_seconds(task: Task, config: TrainingConfig, samples: int) -> int:
    """The longest a run of this job may take before it is stopped and failed."""
    return math.ceil(estimate_seconds(task, config, samples) * TIME_LIMIT_FACTOR) + STARTUP_SECONDS


def samples_in(dataset: Dataset, task: Task) -> int:
    """What an epoch goes through: images, or a table's rows."""
    if task is Task.diffusion:
        return dataset.file_count
    rows = (dataset.stats or {}).get("rows", 1)
    return int(rows)


def time_limit(session: Session, job: TrainingJob) -> int:
    """`job`'s time limit, as its submission priced it."""
    if job.dataset_id is None:
        raise NotFoundError(f"training job {job.id}'s dataset was deleted")
    dataset = session.get(Dataset, job.dataset_id)
    if dataset is None:
        raise NotFoundError(f"training job {job.id}'s dataset was deleted")
    task = Task(job.task)
    return time_limit_seconds(task, TrainingConfig(**job.config), samples_in(dataset, task))


def check_request(dataset: Dataset, task: Task, config: TrainingConfig) -> None:
    """Refuse a job that cannot train on this dataset, naming the field to fix."""
    # A dataset still ingesting is ingested by the run itself if its own run has not finished.
    if dataset.status == DatasetStatus.failed:
        raise ConflictError(f"dataset {dataset.id} is {dataset.status}; it cannot be trained on")
    if dataset.kind != task.dataset_kind:
        raise InvalidInputError(
            f"task {task} needs a {task.dataset_kind} dataset; {dataset.id} is {dataset.kind}",
            field="task",
        )
    if task is Task.diffusion:
        return
    columns = list((dataset.schema or {}).get("columns", {}))
    if config.target is None:
        raise InvalidInputError(f"config.target must name one of {columns}", field="config.target")
    if config.target not in columns:
        raise InvalidInputError(
            f"column {config.target!r} is not in dataset {dataset.id}; it has {columns}",
            field="config.target",
        )
    # A feature column becomes an input of the exported graph, named as the column.
    output = "probabilities" if task is Task.classification else "prediction"
    if output in columns and output != config.target:
        raise InvalidInputError(
            f"feature column {output!r} has the name of the model's output; rename it in the "
            "dataset, or make it the target",
            field="dataset_id",
        )


def submit(
    session: Session,
    user: User,
    *,
    dataset_id: str,
    task: Task,
    model_name: str,
    config: TrainingConfig,
    price_micros_per_second: int,
    deploy: DeployPolicy = DeployPolicy.auto,
) -> TrainingJob:
    """A validated, priced `queued` training job (flushed); the Dagster sensor picks it up once
    the caller holds its credit (training_charges.hold) and commits."""
    if not MODEL_NAME.match(model_name):
        raise InvalidInputError(
            "model_name must be 2-63 lowercase letters, digits or '-'", field="model_name"
        )
    dataset = access.get_owned(session, Dataset, dataset_id, user.id, "dataset")
    check_request(dataset, task, config)
    check_model_name(session, user.id, model_name, task)
    seconds = time_limit_seconds(task, config, samples_in(dataset, task))
    job = TrainingJob(
        user_id=user.id,
        dataset_id=dataset.id,
        task=task,
        model_name=model_name,
        config=config.model_dump(),
        deploy=deploy,
        registered_model=registered_model_name(user.id, model_name),
        estimated_cost_micros=seconds * price_micros_per_second,
        logs="",
    )
    session.add(job)
    session.flush()
    return job


def check_model_name(session: Session, user_id: str, model_name: str, task: Task) -> None:
    """Refuse a name that would shadow a public model for its owner, or that already names
    the owner's model of another kind (a generator's versions cannot become a classifier's)."""
    public = session.scalar(
        select(Model.id).where(Model.name == model_name, Model.visibility == Visibility.public)
    )
    if public is not None:
        raise InvalidInputError(
            f"{model_name!r} is a public model's name; pick another for your model",
            field="model_name",
        )
    runtime = ModelRuntime.onnx_diffusion if task is Task.diffusion else ModelRuntime.onnx
    name = registered_model_name(user_id, model_name)
    entries = session.scalars(
        select(Model).where(
            or_(Model.name == name, Model.registered_model == name), Model.deleted_at.is_(None)
        )
    ).all()
    for entry in entries:
        if entry.name != name or entry.registered_model != name:
            # An admin gave this model to another user, or gave another's model to this one.
            raise ConflictError(
                f"the name {model_name!r} belongs to a model an admin transferred; pick another "
                "model_name"
            )
        if entry.runtime != runtime:
            raise ConflictError(
                f"your model {model_name!r} is a {entry.runtime} model; a {task} job trains a "
                f"{runtime} model: pick another model_name"
            )


def get_owned(session: Session, job_id: str, user_id: str) -> TrainingJob:
    return access.get_owned(session, TrainingJob, job_id, user_id, "training job")


def get(session: Session, job_id: str) -> TrainingJob:
    """The job with this id, whoever owns it (for the platform's own runs), else NotFoundError."""
    return access.get_owned(session, TrainingJob, job_id, None, "training job")


def cancel(
    session: Session, job_id: str, user_id: str, *, price_micros_per_second: int
) -> TrainingJob:
    """Queued jobs end at once, uncharged; running ones are stopped by the sensor that watches
    this flag, and charged the seconds they ran."""
    job = get_owned(session, job_id, user_id)
    session.refresh(job, with_for_update=True)
    if job.status in TERMINAL:
        raise ConflictError(f"training job {job.id} already ended {job.status}")
    job.cancel_requested = True
    if job.status == TrainingStatus.queued:
        session.flush()
        finish(
            session,
            job.id,
            TrainingStatus.canceled,
            price_micros_per_second=price_micros_per_second,
        )
    return job


def mark_running(session: Session, job_id: str, dagster_run_id: str) -> bool:
    """Claim a queued job for a run; False when it is not queued (canceled before it began)."""
    claimed = session.scalar(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == TrainingStatus.queued)
        .values(status=TrainingStatus.running, dagster_run_id=dagster_run_id, started_at=utcnow())
        .returning(TrainingJob.id)
    )
    return claimed is not None


def append_log(
    session: Session, job_id: str, line: str, progress: dict[str, Any] | None = None
) -> None:
    """Add one log line (and the latest progress) to the job, so API readers see it at once."""
    job = session.get(TrainingJob, job_id, with_for_update=True)
    if job is None:
        raise NotFoundError(f"no training job with id {job_id}")
    job.logs = f"{job.logs}{line.rstrip()}\n"
    if progress is not None:
        job.progress = progress


def finish(
    session: Session,
    job_id: str,
    status: TrainingStatus,
    *,
    price_micros_per_second: int,
    ended_at: datetime | None = None,
    error: str | None = None,
    registered_version: str | None = None,
) -> bool:
    """Record the outcome once and settle its charge in the same transaction: the seconds run
    until `ended_at` (default now) at the price for a success or a user's cancel, nothing for a
    failure. A job that already ended keeps its first outcome and charge; False then."""
    job = session.get(TrainingJob, job_id, with_for_update=True, populate_existing=True)
    if job is None:
        raise NotFoundError(f"no training job with id {job_id}")
    if job.status in TERMINAL:
        return False
    job.status = status
    job.completed_at = utcnow()
    if error is not None:
        job.error = error
    if registered_version is not None:
        job.registered_version = registered_version
    training_charges.settle(
        session,
        job,
        ended_at=min(ended_at or job.completed_at, job.completed_at),
        price_micros_per_second=price_micros_per_second,
    )
    session.flush()
    return True

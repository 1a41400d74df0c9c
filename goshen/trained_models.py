"""Models customers train: each is a private catalog entry of its owner, named as they chose.

A training job registers a version of `<user id>.<model name>` in MLflow (goshen.training). When
the version is registered, the entry is made (on the model's first version: private, owned by the
job's user, following the registered model's `production` alias, priced by the operator's
GOSHEN_TRAINED_MODEL_* settings) and the version recorded with what it was trained on, how it
measured and what it takes (model_versions). Whether it then serves the version is the job's
deploy policy (DeployPolicy), decided once its checks ran (`deploy_decision`):
- `auto`: it serves the version that `production` points at, which moves only to versions whose
  checks passed and whose metric is not worse than the live one's (goshen.registry.promote); a
  model's first version that passed its checks is live at once;
- `pin`: it serves the version, pinned, when its checks passed, whatever its metric;
- `none`: the version is recorded only; its owner deploys it when they choose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from goshen import catalog
from goshen.db.models import (
    DeployPolicy,
    Model,
    ModelKind,
    ModelRuntime,
    ModelStatus,
    ModelVersion,
    PricingUnit,
    TrainingJob,
    Visibility,
)
from goshen.errors import ConflictError

PRODUCTION = "production"


@dataclass(frozen=True)
class TrainedVersion:
    """A registered version of a job's model, as the platform records it."""

    version: str
    runtime: ModelRuntime
    input_schema: dict[str, Any]
    examples: list[Any]
    metrics: dict[str, float]
    metric_name: str
    checks_passed: bool
    mlflow_run_id: str | None
    classes: list[str] | None = None
    image_size: int | None = None


@dataclass(frozen=True)
class Prices:
    """What the operator charges for calls to customers' models (GOSHEN_TRAINED_MODEL_*)."""

    image_micros: int
    request_micros: int


def entry_for_job(
    session: Session, job: TrainingJob, runtime: ModelRuntime, prices: Prices
) -> Model:
    """The job owner's catalog entry for its model, made on its first version (`deploying`
    until the job decides what it serves); ConflictError when the name holds a model of
    another kind or of another registered model (one given to this user by an admin)."""
    name = job.registered_model
    assert name is not None, "submit names every job's registered model"
    model = session.scalar(select(Model).where(Model.name == name, Model.deleted_at.is_(None)))
    if model is None:
        model = _new_entry(job, name, runtime, prices)
        try:
            with session.begin_nested():
                session.add(model)
        except IntegrityError:
            # Another job of the same model registered its version first.
            model = session.scalar(select(Model).where(Model.name == name))
            assert model is not None, "the entry that won the race exists"
    if model.registered_model != name:
        raise ConflictError(
            f"your model {job.model_name} was given to you by an admin; train under another name"
        )
    if model.runtime != runtime:
        raise ConflictError(
            f"{job.model_name} is a {model.runtime} model; a {runtime} model needs another name"
        )
    return model


def _new_entry(job: TrainingJob, name: str, runtime: ModelRuntime, prices: Prices) -> Model:
    generates = runtime == ModelRuntime.onnx_diffusion
    return Model(
        name=name,
        kind=ModelKind.diffusion if generates else ModelKind.onnx,
        runtime=runtime,
        description=f"{job.model_name}: trained by training job {job.id} ({job.task}) on "
        f"dataset {job.dataset_id}",
        registered_model=name,
        alias=PRODUCTION,
        pricing_unit=PricingUnit.image if generates else PricingUnit.request,
        price_micros=prices.image_micros if generates else prices.request_micros,
        visibility=Visibility.private,
        owner_id=job.user_id,
        # Awaiting its alias until the job's version is deployed (serve_decided).
        status=ModelStatus.deploying,
    )


def record_version(
    session: Session, model: Model, job: TrainingJob, trained: TrainedVersion
) -> ModelVersion:
    """Record (once; again: the same row, refreshed) a registered version of `model`."""
    row = session.scalar(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == trained.version
        )
    )
    if row is None:
        row = ModelVersion(model_id=model.id, version=trained.version, source="training")
        session.add(row)
    row.classes = trained.classes
    row.image_size = trained.image_size
    row.input_schema = trained.input_schema
    row.examples = trained.examples
    row.metrics = trained.metrics
    row.metric_name = trained.metric_name
    row.checks_passed = trained.checks_passed
    row.training_job_id = job.id
    row.dataset_id = job.dataset_id
    row.mlflow_run_id = trained.mlflow_run_id
    session.flush()
    return row


def checks_failed(model: Model, version: str) -> None:
    """A version failed its checks: an entry that serves nothing says so instead of waiting."""
    if catalog.serving_version(model) is None:
        model.status = ModelStatus.disabled
        model.status_error = f"version {version} failed its checks; train again"


def serve_decided(
    session: Session,
    model: Model,
    *,
    policy: DeployPolicy,
    version: str,
    checks_passed: bool,
    production: str | None,
) -> str:
    """Switch `model` to what its job's policy decided, given the version `production` points
    at after promotion; returns what happened, for the job's log."""
    if policy == DeployPolicy.pin and checks_passed:
        if catalog.serving_version(model) != version:
            model.previous_version = catalog.serving_version(model)
        model.pinned_version = model.live_version = version
        model.status, model.status_error = ModelStatus.ready, None
        catalog.publish_version(session, model)
        return f"serving version {version}, pinned as the job asked"
    if policy == DeployPolicy.auto and production is not None:
        if model.status == ModelStatus.disabled and catalog.serving_version(model) is None:
            # It never served (its versions so far were only recorded): this one may.
            model.status = ModelStatus.deploying
        catalog.set_live_version(session, model.registered_model, PRODUCTION, production)
    if model.status == ModelStatus.deploying and catalog.serving_version(model) is None:
        model.status = ModelStatus.disabled  # nothing to serve: its owner deploys a version
    if policy == DeployPolicy.auto and production is not None:
        if model.status == ModelStatus.disabled:
            return (
                f"production is version {production}; the model is undeployed, so it serves "
                "nothing until you deploy it (POST /v1/models/{name}/deploy)"
            )
        if model.pinned_version is not None:
            return (
                f"production is version {production}; the model stays pinned at version "
                f"{model.pinned_version} until you deploy it (POST /v1/models/{{name}}/deploy)"
            )
        if production == version:
            return f"serving version {version}"
        return f"still serving version {production}: version {version} did not earn promotion"
    if not checks_passed:
        return f"version {version} failed its checks; it is not served"
    return f"version {version} is registered; deploy it with POST /v1/models/{{name}}/deploy"

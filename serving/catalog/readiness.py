"""The catalog as this process serves it, as /readyz reports it: ready once the first reconcile
pass ran and every public live ONNX entry is loaded at its live version, or failed to load.

An entry whose version failed to load is listed in `failed` (with its error) and does not hold
readiness back: every replica would fail it alike, and one broken model must not take the API
out of its load balancer; its /predict answers 503 meanwhile, and /readyz reports `degraded`.

Entries still `deploying` because the registry lacks their alias (the built-in ones before
`goshen train digits`) are listed with why, and do not hold readiness back: a fresh platform with
nothing trained yet is ready. Private uploads load on their first request and are neither awaited
nor listed (the report is public).
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from goshen import catalog
from goshen.db.models import Model, ModelKind, ModelStatus, Visibility
from serving.predict.models import PredictModels

log = logging.getLogger(__name__)
NOT_RECONCILED_YET = "the first reconcile pass (registry sync and model loads) has not finished yet"


class ServedModel(BaseModel):
    """A public live ONNX entry: the version it should serve, and what this process serves."""

    name: str
    live_version: str
    loaded_version: str | None = Field(description="null while it is not loaded here")
    last_error: str | None = Field(description="why its last load here failed, if it did")


class DeployingModel(BaseModel):
    """A public entry that follows an alias the registry does not resolve yet."""

    name: str
    follows: str = Field(description="the registered model and alias it follows: name@alias")
    reason: str = Field(description="why it serves nothing yet")


class CatalogCheck(BaseModel):
    """The `models` check of /readyz."""

    ok: bool
    error: str | None = Field(description="what is not loaded yet, or why the check could not run")
    models: list[ServedModel]
    failed: list[str] = Field(
        default_factory=list, description="public live entries whose version failed to load here"
    )
    deploying: list[DeployingModel]


def catalog_check(
    reads: sessionmaker[Session], predict_models: PredictModels, wait_seconds: float
) -> CatalogCheck:
    """The check, once the first reconcile pass ran (waiting for it at most `wait_seconds`)."""
    if not predict_models.first_pass.wait(wait_seconds):
        return CatalogCheck(ok=False, error=NOT_RECONCILED_YET, models=[], deploying=[])
    try:
        with reads() as session:
            live = session.execute(
                select(Model.id, Model.name, Model.pinned_version, Model.live_version).where(
                    Model.kind == ModelKind.onnx,
                    Model.status == ModelStatus.ready,
                    Model.visibility == Visibility.public,
                )
            ).all()
            awaiting = session.execute(
                select(Model.id, Model.name, Model.registered_model, Model.alias).where(
                    catalog.awaiting_alias(), Model.visibility == Visibility.public
                )
            ).all()
    except SQLAlchemyError as exc:
        log.warning("readiness: the catalog could not be read: %s", exc)
        error = f"the catalog could not be read ({type(exc).__name__})"
        return CatalogCheck(ok=False, error=error, models=[], deploying=[])
    errors = {entry.name: entry.last_error for entry in predict_models.health()}
    served = [
        ServedModel(
            name=name,
            live_version=wanted,
            loaded_version=predict_models.loaded_version(model_id),
            last_error=errors.get(name),
        )
        for model_id, name, pinned, live_version in live
        if (wanted := pinned or live_version) is not None
    ]
    unloaded = [model for model in served if model.loaded_version != model.live_version]
    missing = [model.name for model in unloaded if model.last_error is None]
    failed = [model.name for model in unloaded if model.last_error is not None]
    deploying = [
        DeployingModel(
            name=name,
            follows=f"{registered_model}@{alias}",
            reason=predict_models.registry_sync.why_waiting(model_id),
        )
        for model_id, name, registered_model, alias in awaiting
    ]
    return CatalogCheck(
        ok=not missing,
        error=f"not loaded yet: {', '.join(missing)}" if missing else None,
        models=served,
        failed=failed,
        deploying=deploying,
    )

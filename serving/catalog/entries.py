"""Catalog entries as their owners and admins manage them: their versions, and deleting one."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from goshen import registry
from goshen.catalog import BUILTIN_MODELS
from goshen.db import session_scope
from goshen.db.models import Model, ModelVersion, utcnow
from goshen.errors import ConflictError, InvalidInputError, UnavailableError
from serving.catalog import deployments
from serving.catalog.views import version_view
from serving.http.pagination import Page, paginate
from serving.http.state import ApiState
from serving.schemas import DeployRequest
from serving.schemas.models import ModelVersionPublic

BUILTIN_NAMES = frozenset(builtin.name for builtin in BUILTIN_MODELS)


async def deploy(state: ApiState, model: Model, body: DeployRequest | None) -> Model:
    """Deploy an entry as `body` asks (a version pinned, an alias followed, or as it was); the
    entry's cached row is dropped whether the deploy succeeded or failed (it records why)."""
    body = body or DeployRequest()
    if body.version is not None and body.alias is not None:
        raise InvalidInputError("give at most one of `version` and `alias`", field="version")
    try:
        return await run_in_threadpool(
            deployments.deploy,
            state.sessions,
            state.settings,
            state.predict_models,
            model.id,
            version=body.version,
            alias=body.alias,
        )
    finally:
        state.catalog.invalidate(model.name)


def undeploy(state: ApiState, model: Model) -> Model:
    """Stop serving an entry: its calls answer 409 until it is deployed again."""
    undeployed = deployments.undeploy(state.sessions, state.predict_models, model.id)
    state.catalog.invalidate(model.name)
    return undeployed


async def rollback(state: ApiState, model: Model) -> Model:
    """Serve the entry's version from before its last switch again, pinned."""
    try:
        return await run_in_threadpool(
            deployments.rollback, state.sessions, state.settings, state.predict_models, model.id
        )
    finally:
        state.catalog.invalidate(model.name)


def versions_page(
    session: Session, model: Model, *, limit: int, cursor: str | None
) -> Page[ModelVersionPublic]:
    query = select(ModelVersion).where(ModelVersion.model_id == model.id)
    return paginate(
        session,
        query,
        ModelVersion.id,
        ModelVersionPublic,
        limit=limit,
        cursor=cursor,
        render=lambda rows: [version_view(row, model) for row in rows],
    )


def delete_entry(state: ApiState, model: Model) -> None:
    """Soft-delete an entry (jobs keep pointing at it), its name freed. Its registered model's
    aliases go first, so nothing changes when the registry is down (a retry finishes the job),
    and only when no other entry follows that registered model."""
    if model.name in BUILTIN_NAMES:
        raise ConflictError(
            f"{model.name} is one of the platform's own models; undeploy it instead"
        )
    settings = state.settings
    with state.sessions() as session:
        shared = session.scalar(
            select(Model.id).where(
                Model.registered_model == model.registered_model,
                Model.id != model.id,
                Model.deleted_at.is_(None),
            )
        )
    # `previous` first: should the registry fail between the two, the model still compares
    # its next version with the live one.
    for alias in () if shared else (registry.PREVIOUS, registry.PRODUCTION):
        try:
            registry.delete_alias(
                settings.resolved_mlflow_tracking_uri,
                model.registered_model,
                alias,
                settings.dependency_timeout_seconds,
            )
        except registry.RegistryUnavailableError as exc:
            raise UnavailableError(
                f"model {model.name} cannot be deleted right now: the model registry does not "
                "answer; try again shortly",
                retry_after_seconds=5,
            ) from exc
    deployments.undeploy(state.sessions, state.predict_models, model.id)
    with session_scope(state.sessions) as session:
        entry = session.get_one(Model, model.id)
        entry.deleted_at = utcnow()
        # The name is free again: the deleted entry keeps its id in a name no one can call.
        entry.name = f"{model.name}~deleted-{model.id}"
        entry.alias = None
    state.catalog.invalidate(model.name)

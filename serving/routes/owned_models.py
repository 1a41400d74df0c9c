"""Owners manage the models they trained: describe, deploy, undeploy, roll back, list versions,
delete. Each route answers 404 for a model the caller does not own; admins manage any owner's
model through /v1/admin/models."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Response

from goshen import catalog
from goshen.accounts import Principal
from goshen.db import session_scope
from goshen.db.models import Model
from serving.catalog import entries
from serving.catalog.views import public_model
from serving.http.dependencies import ApiStateDep, ReadSessionDep, require_scope
from serving.http.pagination import Cursor, Limit, Page
from serving.http.paths import ModelName
from serving.http.state import ApiState
from serving.schemas import DeployRequest, ModelPublic
from serving.schemas.models import ModelVersionPublic, OwnedModelUpdate

router = APIRouter(prefix="/v1/models", tags=["models"])
OwnerPrincipal = Annotated[Principal, Depends(require_scope("models"))]
NOT_YOURS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no model of yours by that name"}
}


def owned(state: ApiState, name: str, principal: Principal) -> Model:
    """The caller's own entry `name` means (NotFoundError for anything else), detached."""
    with state.sessions() as session:
        model = catalog.get_owned(session, name, principal.user.id)
        session.expunge(model)
    return model


def _view(state: ApiState, model: Model, principal: Principal) -> ModelPublic:
    with state.sessions() as session:
        model = session.get_one(Model, model.id)
        return public_model(
            model, viewer_id=principal.user.id, live=catalog.version_record(session, model)
        )


@router.patch("/{name}", responses=NOT_YOURS)
def describe_model(
    name: ModelName, body: OwnedModelUpdate, principal: OwnerPrincipal, state: ApiStateDep
) -> ModelPublic:
    """Change your model's description. Its price is the operator's: owners set none."""
    model = owned(state, name, principal)
    with session_scope(state.sessions) as session:
        session.get_one(Model, model.id).description = body.description
    state.catalog.invalidate(model.name)
    return _view(state, model, principal)


@router.post(
    "/{name}/deploy",
    responses={
        **NOT_YOURS,
        409: {"description": "the version did not load or answer its example"},
        422: {"description": "the model has no such version or alias"},
    },
)
async def deploy_model(
    name: ModelName,
    principal: OwnerPrincipal,
    state: ApiStateDep,
    body: Annotated[DeployRequest | None, Body()] = None,
) -> ModelPublic:
    """Serve your model: `{"version": "3"}` pins a version, `{"alias": "production"}` follows
    the alias that training moves (the default for a trained model), empty keeps what it had.
    The version is prepared and checked before it serves; a failed deploy keeps the live one."""
    model = owned(state, name, principal)
    await entries.deploy(state, model, body)
    return _view(state, model, principal)


@router.post("/{name}/undeploy", responses=NOT_YOURS)
def undeploy_model(name: ModelName, principal: OwnerPrincipal, state: ApiStateDep) -> ModelPublic:
    """Stop serving your model: its calls answer 409 until you deploy it again."""
    model = owned(state, name, principal)
    entries.undeploy(state, model)
    return _view(state, model, principal)


@router.post(
    "/{name}/rollback",
    responses={**NOT_YOURS, 409: {"description": "no previous version, or it did not load"}},
)
async def rollback_model(
    name: ModelName, principal: OwnerPrincipal, state: ApiStateDep
) -> ModelPublic:
    """Serve the version from before the last switch again, pinned until you deploy again (a
    later training job's version then does not replace it)."""
    model = owned(state, name, principal)
    await entries.rollback(state, model)
    return _view(state, model, principal)


@router.get("/{name}/versions", responses=NOT_YOURS)
def list_versions(
    name: ModelName,
    principal: OwnerPrincipal,
    session: ReadSessionDep,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[ModelVersionPublic]:
    """Your model's versions, newest first: metrics, checks, the training job and dataset that
    made each, and which one is live."""
    model = catalog.get_owned(session, name, principal.user.id)
    return entries.versions_page(session, model, limit=limit, cursor=cursor)


@router.delete(
    "/{name}",
    status_code=204,
    responses={**NOT_YOURS, 503: {"description": "the model registry does not answer"}},
)
def delete_model(name: ModelName, principal: OwnerPrincipal, state: ApiStateDep) -> Response:
    """Delete your model: it stops serving at once and disappears from every list, and its
    name is free again. Its versions stay in the MLflow registry for audit; their aliases are
    removed, so a model you train under the same name starts afresh."""
    model = owned(state, name, principal)
    entries.delete_entry(state, model)
    return Response(status_code=204)

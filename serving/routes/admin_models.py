"""Admin: the model catalog. Register entries from the MLflow registry, change their metadata,
pricing and visibility, and deploy, undeploy or roll them back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from goshen import catalog
from goshen.db import session_scope
from goshen.db.models import Model, ModelStatus, User
from goshen.errors import ConflictError, InvalidInputError, NotFoundError
from serving.catalog import deployments, entries
from serving.catalog.views import admin_model
from serving.http.dependencies import AdminPrincipal, ApiStateDep, SessionDep
from serving.http.pagination import Cursor, Limit, Page, paginate
from serving.http.paths import ModelName
from serving.http.state import ApiState
from serving.schemas import AdminModelPublic, DeployRequest, ModelRegister, ModelUpdate
from serving.schemas.models import ModelVersionPublic, OwnerTransfer

router = APIRouter(prefix="/v1/admin/models", tags=["admin"])


def _by_name(state: ApiState, name: str) -> Model:
    with state.sessions() as session:
        model = session.scalar(select(Model).where(Model.name == name, Model.deleted_at.is_(None)))
    if model is None:
        raise NotFoundError(f"no catalog model named {name!r}")
    return model


@router.get("")
def list_catalog(
    _admin: AdminPrincipal, session: SessionDep, limit: Limit = 20, cursor: Cursor = None
) -> Page[AdminModelPublic]:
    """Every entry, private ones and their owners included."""
    return paginate(
        session,
        select(Model),
        Model.id,
        AdminModelPublic,
        limit=limit,
        cursor=cursor,
        render=lambda models: [admin_model(model) for model in models],
    )


@router.get("/{name}")
def get_catalog_entry(
    name: ModelName, _admin: AdminPrincipal, state: ApiStateDep
) -> AdminModelPublic:
    return admin_model(_by_name(state, name))


@router.post(
    "",
    status_code=201,
    responses={
        404: {"description": "the registry has no such registered model"},
        409: {"description": "the name is taken"},
        422: {"description": "the registered model has no such alias or version"},
    },
)
async def register_model(
    body: ModelRegister, _admin: AdminPrincipal, state: ApiStateDep
) -> AdminModelPublic:
    """Register an entry for `registered_model` at `alias` or `version`; deploy it to serve it.

    The version is read from the registry to learn its kind (an ONNX model for /predict, or an
    image generator) and its input schema.
    """
    if (body.alias is None) == (body.version is None):
        raise InvalidInputError("give exactly one of `alias` and `version`", field="alias")
    model = Model(
        name=body.name,
        registered_model=body.registered_model,
        alias=body.alias,
        pinned_version=body.version,
        description=body.description,
        pricing_unit=body.pricing.unit,
        price_micros=body.pricing.price_micros,
        visibility=body.visibility,
        max_batch_size=body.max_batch_size,
        max_wait_ms=body.max_wait_ms,
        status=ModelStatus.disabled,
    )
    version = await run_in_threadpool(
        deployments.resolve_version,
        state.settings,
        body.registered_model,
        version=body.version,
        alias=body.alias,
    )
    facts = await run_in_threadpool(
        deployments.inspect_version, state.settings, body.registered_model, version
    )
    model.kind, model.runtime = facts.kind, facts.runtime
    model.input_schema, model.examples = facts.input_schema, facts.examples
    try:
        with session_scope(state.sessions) as session:
            session.add(model)
    except IntegrityError:
        raise ConflictError(f"the catalog already has a model named {body.name!r}") from None
    return admin_model(model)


@router.patch("/{name}")
def update_model(
    name: ModelName, body: ModelUpdate, _admin: AdminPrincipal, state: ApiStateDep
) -> AdminModelPublic:
    """Change description, pricing, visibility or batching; no deploy needed."""
    with session_scope(state.sessions) as session:
        model = session.scalar(select(Model).where(Model.name == name))
        if model is None:
            raise NotFoundError(f"no catalog model named {name!r}")
        changes = body.model_dump(exclude_unset=True)
        if "pricing" in changes:
            pricing = changes.pop("pricing")
            model.pricing_unit, model.price_micros = pricing["unit"], pricing["price_micros"]
        for field, value in changes.items():
            setattr(model, field, value)
    state.catalog.invalidate(name)
    if {"max_batch_size", "max_wait_ms"} & set(changes):
        state.predict_models.unload(model.id)  # reloaded with the new limits
    return admin_model(model)


@router.post(
    "/{name}/deploy",
    responses={
        409: {"description": "the version did not load or answer its example"},
        422: {"description": "the registry has no such version or alias"},
    },
)
async def deploy_model(
    name: ModelName,
    _admin: AdminPrincipal,
    state: ApiStateDep,
    body: Annotated[DeployRequest | None, Body()] = None,
) -> AdminModelPublic:
    """Resolve the entry's alias (or pinned version), prepare it beside the live version and
    probe it; only then switch to it. A failed deploy answers what failed, leaves the live
    version serving and shows in the entry's `status_error` (an entry that served nothing ends
    `failed`). The answer comes when the deploy has ended."""
    deployed = await entries.deploy(state, _by_name(state, name), body)
    return admin_model(deployed)


@router.post("/{name}/undeploy")
def undeploy_model(name: ModelName, _admin: AdminPrincipal, state: ApiStateDep) -> AdminModelPublic:
    """Stop serving: requests answer 409 until the entry is deployed again."""
    model = entries.undeploy(state, _by_name(state, name))
    return admin_model(model)


@router.post(
    "/{name}/rollback",
    responses={409: {"description": "no previous version, or it did not load"}},
)
async def rollback_model(
    name: ModelName, _admin: AdminPrincipal, state: ApiStateDep
) -> AdminModelPublic:
    """Serve the previous live version again (pinned, until the next deploy)."""
    model = await entries.rollback(state, _by_name(state, name))
    return admin_model(model)


@router.get("/{name}/versions")
def list_model_versions(
    name: ModelName,
    _admin: AdminPrincipal,
    session: SessionDep,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[ModelVersionPublic]:
    """The versions the platform recorded for an entry (a trained model's, a pipeline's)."""
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise NotFoundError(f"no catalog model named {name!r}")
    return entries.versions_page(session, model, limit=limit, cursor=cursor)


@router.post(
    "/{name}/transfer",
    responses={409: {"description": "the new owner already has a model of that name"}},
)
def transfer_model(
    name: ModelName, body: OwnerTransfer, _admin: AdminPrincipal, state: ApiStateDep
) -> AdminModelPublic:
    """Give an entry to another user: it becomes theirs, named `<their id>.<name>` (its
    registered model keeps its name). Its visibility does not change: publishing it takes an
    explicit `PATCH` with `visibility`."""
    with session_scope(state.sessions) as session:
        user = session.scalar(select(User).where(User.email == body.owner_email))
        if user is None:
            raise InvalidInputError(f"no user with email {body.owner_email!r}", field="owner_email")
        model = session.scalar(select(Model).where(Model.name == name))
        if model is None:
            raise NotFoundError(f"no catalog model named {name!r}")
        new_name = catalog.owned_name(user.id, name.split(".", 1)[-1])
        if new_name != name and session.scalar(select(Model.id).where(Model.name == new_name)):
            raise ConflictError(f"{body.owner_email} already has a model named {new_name!r}")
        model.owner_id, model.name = user.id, new_name
    state.catalog.invalidate(name)
    return admin_model(model)


@router.delete(
    "/{name}",
    status_code=204,
    responses={
        409: {"description": "one of the platform's own models: undeploy it instead"},
        503: {"description": "the model registry does not answer"},
    },
)
def delete_catalog_entry(name: ModelName, _admin: AdminPrincipal, state: ApiStateDep) -> Response:
    """Delete an entry as its owner would (DELETE /v1/models/{name}): it stops serving and its
    name is free; its registry versions stay for audit, without aliases."""
    entries.delete_entry(state, _by_name(state, name))
    return Response(status_code=204)

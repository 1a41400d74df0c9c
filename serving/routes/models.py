"""The model catalog as developers see it: what they can call, its input schema and price."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from goshen import catalog
from goshen.accounts import Principal
from goshen.db.models import Model
from serving.catalog.views import public_model
from serving.http.dependencies import ReadSessionDep, require_any_scope
from serving.http.pagination import Cursor, Limit, Page, paginate
from serving.http.paths import ModelName
from serving.schemas import ModelPublic

router = APIRouter(prefix="/v1/models", tags=["models"])
ModelsPrincipal = Annotated[Principal, Depends(require_any_scope("models", "generate", "predict"))]


OwnerFilter = Annotated[
    Literal["me"] | None, Query(description="`me`: only the models you own (that you trained)")
]


@router.get("")
def list_models(
    principal: ModelsPrincipal,
    session: ReadSessionDep,
    limit: Limit = 20,
    cursor: Cursor = None,
    owner: OwnerFilter = None,
) -> Page[ModelPublic]:
    """Public models and your own, newest first; `owner=me`: only your own."""
    user_id = principal.user.id
    query = select(Model).where(catalog.visible_to(user_id))
    if owner == "me":
        query = query.where(Model.owner_id == user_id)

    def render(models: Sequence[Model]) -> list[ModelPublic]:
        return [public_model(model, viewer_id=user_id) for model in models]

    return paginate(
        session, query, Model.id, ModelPublic, limit=limit, cursor=cursor, render=render
    )


@router.get("/{name}")
def get_model(name: ModelName, principal: ModelsPrincipal, session: ReadSessionDep) -> ModelPublic:
    """One model: its input as JSON Schema with examples, its pricing, whether it is live. A
    name resolves to your own model of that name first, else to the public one."""
    model = catalog.get_visible(session, name, principal.user.id)
    live = catalog.version_record(session, model) if model.owner_id == principal.user.id else None
    return public_model(model, viewer_id=principal.user.id, live=live)

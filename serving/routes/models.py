"""The model catalog as developers see it: what they can call, its input schema and price."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends
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


@router.get("")
def list_models(
    principal: ModelsPrincipal, session: ReadSessionDep, limit: Limit = 20, cursor: Cursor = None
) -> Page[ModelPublic]:
    """Public models and your own, newest first."""
    query = select(Model).where(catalog.visible_to(principal.user.id))

    def render(models: Sequence[Model]) -> list[ModelPublic]:
        return [public_model(model) for model in models]

    return paginate(
        session, query, Model.id, ModelPublic, limit=limit, cursor=cursor, render=render
    )


@router.get("/{name}")
def get_model(name: ModelName, principal: ModelsPrincipal, session: ReadSessionDep) -> ModelPublic:
    """One model: its input as JSON Schema with examples, its pricing, whether it is live."""
    return public_model(catalog.get_visible(session, name, principal.user.id))

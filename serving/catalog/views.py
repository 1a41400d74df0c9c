"""Catalog entries as developers and admins see them."""

from __future__ import annotations

from goshen import catalog
from goshen.db.models import Model
from serving.schemas import AdminModelPublic, ModelPublic


def public_model(model: Model) -> ModelPublic:
    return ModelPublic(
        name=model.name,
        kind=model.kind,
        runtime=model.runtime,
        description=model.description,
        status=model.status,
        live_version=catalog.serving_version(model),
        visibility=model.visibility,
        pricing={"unit": str(model.pricing_unit), "price_micros": model.price_micros},
        input_schema=model.input_schema,
        examples=model.examples,
    )


def admin_model(model: Model) -> AdminModelPublic:
    return AdminModelPublic(
        **public_model(model).model_dump(),
        id=model.id,
        registered_model=model.registered_model,
        alias=model.alias,
        pinned_version=model.pinned_version,
        previous_version=model.previous_version,
        status_error=model.status_error,
        owner_id=model.owner_id,
        max_batch_size=model.max_batch_size,
        max_wait_ms=model.max_wait_ms,
        created_at=model.created_at,
        updated_at=model.updated_at,
    )

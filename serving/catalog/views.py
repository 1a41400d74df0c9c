"""Catalog entries as developers and admins see them."""

from __future__ import annotations

from typing import Any

from goshen import catalog
from goshen.db.models import Model, ModelVersion
from serving.schemas import AdminModelPublic, ModelPublic
from serving.schemas.models import ModelVersionPublic

# What a published `value_range` is: a hint, not a rule (README, "Running predictions").
VALUE_RANGE_HINT = (
    "value_range is a hint, not a rule: the values the model was made for (a table model's: "
    "those seen in training). POST /v1/models/{name}/predict does not check it; values outside "
    "it are answered as any others, with what the model makes of them."
)


def public_model(
    model: Model, *, viewer_id: str | None = None, live: ModelVersion | None = None
) -> ModelPublic:
    """An entry as `viewer_id` sees it: its owner also sees how its live version (`live`) was
    trained."""
    owned = viewer_id is not None and model.owner_id == viewer_id
    return ModelPublic(
        name=model.name,
        kind=model.kind,
        runtime=model.runtime,
        description=model.description,
        status=model.status,
        live_version=catalog.serving_version(model),
        visibility=model.visibility,
        pricing={"unit": str(model.pricing_unit), "price_micros": model.price_micros},
        input_schema=with_range_hints(model.input_schema),
        # Request bodies for POST /v1/models/{name}/predict ({"inputs": {...}}) for ONNX
        # models, bodies for POST /v1/generate's `input` for generators, sent as they are.
        examples=model.examples,
        classes=model.classes,
        owned=owned,
        trained=trained_summary(live) if owned and live is not None else None,
    )


def with_range_hints(schema: dict[str, Any]) -> dict[str, Any]:
    """An ONNX signature's schema saying, on each tensor with a `value_range`, that /predict does
    not check it (`value_range_checked: false`), and why (`value_range_note`). Said here, where
    entries are shown, so that every entry says it, whenever its schema was recorded."""
    ranged = False
    marked: dict[str, Any] = dict(schema)
    for key in ("inputs", "outputs"):
        specs = schema.get(key)
        if not isinstance(specs, list):
            continue
        marked[key] = [_range_marked(spec) for spec in specs]
        ranged = ranged or any(_has_range(spec) for spec in specs)
    if ranged:
        marked["value_range_note"] = VALUE_RANGE_HINT
    return marked


def _has_range(spec: Any) -> bool:
    return isinstance(spec, dict) and spec.get("value_range") is not None


def _range_marked(spec: Any) -> Any:
    return {**spec, "value_range_checked": False} if _has_range(spec) else spec


def trained_summary(row: ModelVersion) -> dict[str, Any]:
    return {
        "version": row.version,
        "training_job_id": row.training_job_id,
        "dataset_id": row.dataset_id,
        "metrics": row.metrics,
        "checks_passed": row.checks_passed,
        "created_at": row.created_at.isoformat(),
    }


def version_view(row: ModelVersion, model: Model) -> ModelVersionPublic:
    live = catalog.serving_version(model) == row.version
    return ModelVersionPublic.model_validate(row, from_attributes=True).model_copy(
        update={"live": live}
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
        deleted_at=model.deleted_at,
        created_at=model.created_at,
        updated_at=model.updated_at,
    )

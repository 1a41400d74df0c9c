"""POST /v1/models: a user uploads an ONNX model and calls it through /predict.

The file is checked in a subprocess with a memory cap and a timeout before anything is kept: its
size, that it is ONNX and not a pickle, standard op domains only, no external data outside its
folder, and that ONNX Runtime loads it. Then it is logged to MLflow, registered as
`<user id>.<name>`, and becomes a catalog entry private to its uploader until an admin makes it
public. A refusal says why, and leaves nothing registered.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from goshen import registry
from goshen.accounts import Principal
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Model, ModelKind, ModelRuntime, ModelStatus, PricingUnit, Visibility
from goshen.errors import ConflictError, RateLimitedError
from goshen.model_uploads.validation import ModelUploadLimits, validate_onnx_upload
from serving.catalog.views import public_model
from serving.http.dependencies import (
    CatalogCacheDep,
    SessionsDep,
    SettingsDep,
    require_scope,
)
from serving.http.multipart import multipart_form, received_upload
from serving.schemas import CatalogName, Description, ModelPublic, RequestBody

# Each check may take GOSHEN_MODEL_VALIDATION_MEMORY_BYTES and a core for its timeout: at most
# this many run at once in one API process; more uploads answer 429 meanwhile.
MAX_CONCURRENT_CHECKS = 2
_checks = threading.BoundedSemaphore(MAX_CONCURRENT_CHECKS)

router = APIRouter(prefix="/v1/models", tags=["models"])
ModelsPrincipal = Annotated[Principal, Depends(require_scope("models"))]

_UPLOAD_FORM = multipart_form(
    "one .onnx file (ONNX protobuf, its weights inside it)",
    {
        "name": TypeAdapter(CatalogName).json_schema(),  # the pattern the route checks
        "description": TypeAdapter(Description).json_schema(),
    },
)


class ModelUpload(RequestBody):
    """The text fields of a model upload; the file is the multipart part `file`."""

    name: CatalogName
    description: Description = ""


@router.post(
    "",
    status_code=201,
    openapi_extra=_UPLOAD_FORM,
    responses={
        409: {"description": "a catalog model has that name"},
        429: {"description": "this server is checking the most uploads it checks at once"},
        413: {"description": "the file passes GOSHEN_MAX_MODEL_UPLOAD_BYTES"},
        422: {"description": "a field is wrong, or the model is refused; the detail says why"},
    },
)
async def upload_model(
    request: Request,
    principal: ModelsPrincipal,
    settings: SettingsDep,
    sessions: SessionsDep,
    catalog_cache: CatalogCacheDep,
) -> ModelPublic:
    """Upload an ONNX model; it is yours alone until an admin makes it public."""
    async with received_upload(
        request,
        ModelUpload,
        "model",
        filename="model.onnx",
        max_file_bytes=settings.max_model_upload_bytes,
        limit_name="GOSHEN_MAX_MODEL_UPLOAD_BYTES",
    ) as (body, file):
        model = await run_in_threadpool(
            _register, sessions, principal.user.id, body, file, settings
        )
    catalog_cache.invalidate(body.name)  # a cached "no such model" goes
    return public_model(model)


def _register(
    factory: sessionmaker[Session],
    user_id: str,
    body: ModelUpload,
    model_file: Path,
    settings: Settings,
) -> Model:
    with factory() as session:
        if session.scalar(select(Model.id).where(Model.name == body.name)) is not None:
            raise ConflictError(f"a catalog model is already named {body.name!r}; pick another")
    limits = ModelUploadLimits(
        max_bytes=settings.max_model_upload_bytes,
        memory_bytes=settings.model_validation_memory_bytes,
        timeout_seconds=settings.model_validation_timeout_seconds,
    )
    # The upload is only ever opened in the checking subprocess; its verdict has the schema.
    if not _checks.acquire(blocking=False):
        raise RateLimitedError(
            f"{MAX_CONCURRENT_CHECKS} uploaded models are being checked on this server now; "
            "send yours again shortly",
            retry_after_seconds=10,
        )
    try:
        schema = validate_onnx_upload(model_file, limits).public_schema()
    finally:
        _checks.release()
    registered = registry.log_uploaded_onnx(
        model_file,
        f"{user_id}.{body.name}",
        experiment=f"uploads/{user_id}",
        metadata={"kind": "onnx", "uploaded_by": user_id},
    )
    model = Model(
        name=body.name,
        kind=ModelKind.onnx,
        runtime=ModelRuntime.onnx,
        description=body.description,
        registered_model=registered.name,
        pinned_version=registered.version,
        live_version=registered.version,
        input_schema=schema,
        examples=[schema["example"]],
        pricing_unit=PricingUnit.request,
        price_micros=0,
        visibility=Visibility.private,
        status=ModelStatus.ready,
        owner_id=user_id,
    )
    try:
        with session_scope(factory) as session:
            session.add(model)
    except IntegrityError:
        # Someone took the name while this upload was checked: nothing of it may stay.
        registry.delete_version(registered.name, registered.version)
        raise ConflictError(f"a catalog model is already named {body.name!r}") from None
    return model

"""A user's datasets: upload an image archive or a table, list, read, follow and delete them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from goshen.accounts import Principal
from goshen.db import access
from goshen.db.models import Dataset, DatasetKind, DatasetStatus, TrainingJob, TrainingStatus
from goshen.errors import ConflictError
from goshen.ids import new_id
from goshen.storage import ArtifactStore, artifact_key
from goshen.uploads.limits import UploadLimits
from goshen.uploads.manifest import StoredDataset
from goshen.uploads.store import store_dataset
from serving.http.dependencies import (
    ReadSessionDep,
    ReadSessionsDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    require_scope,
)
from serving.http.multipart import multipart_form, received_upload
from serving.http.pagination import Cursor, Limit, Page, page_of_owned
from serving.http.paths import DatasetId
from serving.schemas import ColumnName, Name
from serving.schemas.datasets import DatasetCreate, DatasetPublic

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
DatasetsPrincipal = Annotated[Principal, Depends(require_scope("datasets"))]
ENDED = (DatasetStatus.ready, DatasetStatus.failed)
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
# A stream ends after this even while the dataset still ingests; the client reconnects.
MAX_STREAM_SECONDS = 300.0

_UPLOAD_FORM = multipart_form(
    "a .zip, .tar or .tar.gz of PNG, JPEG, BMP or GIF images (optional top-level labels.csv of "
    "file,label; or one folder per class), or a CSV or Parquet table",
    {
        "name": TypeAdapter(Name).json_schema(),
        "kind": {
            "type": "string",
            "enum": [kind.value for kind in DatasetKind],
            "description": "inferred from the file's content when absent",
        },
        "target": {
            **TypeAdapter(ColumnName).json_schema(),
            "description": "tables: the target column, described in stats",
        },
    },
)


@router.post(
    "",
    status_code=201,
    openapi_extra=_UPLOAD_FORM,
    responses={
        413: {"description": "the upload passes a GOSHEN_MAX_* limit, which the detail names"},
        415: {"description": "the body is not multipart/form-data"},
        422: {"description": "a field is wrong, or the file's content is refused"},
    },
)
async def create_dataset(
    request: Request,
    principal: DatasetsPrincipal,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
) -> DatasetPublic:
    """Upload a dataset; it is checked against the upload limits before anything is kept."""
    limits = UploadLimits.from_settings(settings)
    async with received_upload(
        request,
        DatasetCreate,
        "dataset",
        filename="upload",
        max_file_bytes=limits.max_upload_bytes,
        limit_name="GOSHEN_MAX_UPLOAD_BYTES",
    ) as (body, file):
        return await run_in_threadpool(
            _store_and_record, session, store, principal.user.id, body, file, limits
        )


def _store_and_record(
    session: Session,
    store: ArtifactStore,
    user_id: str,
    body: DatasetCreate,
    upload: Path,
    limits: UploadLimits,
) -> DatasetPublic:
    """Store the checked upload, then its row; if either fails, neither is kept."""
    dataset_id = new_id("ds")
    prefix = artifact_key("datasets", user_id, dataset_id)
    stored = store_dataset(upload, store, prefix, limits, kind=body.kind, target=body.target)
    try:
        dataset = Dataset(
            id=dataset_id,
            user_id=user_id,
            name=body.name,
            kind=stored.kind,
            status=DatasetStatus.uploaded,
            storage_prefix=prefix,
            size_bytes=stored.size_bytes,
            file_count=stored.file_count,
            schema=stored.schema,
            stats=stored.stats,
            progress=_waiting(stored),
        )
        session.add(dataset)
        session.commit()
    except BaseException:
        session.rollback()
        store.delete_prefix(prefix)
        raise
    return DatasetPublic.model_validate(dataset)


def _waiting(stored: StoredDataset) -> dict[str, Any]:
    """Progress until an ingestion run picks the dataset up (seconds: see the README)."""
    if stored.kind is DatasetKind.images:
        total, unit = stored.file_count, "files"
    else:
        total, unit = stored.stats["rows"], "rows"
    return {"stage": "waiting to start", "done": 0, "total": total, "unit": unit, "percent": 0}


@router.get("")
def list_datasets(
    principal: DatasetsPrincipal, session: SessionDep, limit: Limit = 20, cursor: Cursor = None
) -> Page[DatasetPublic]:
    return page_of_owned(
        session, Dataset, DatasetPublic, principal.user.id, limit=limit, cursor=cursor
    )


@router.get("/{dataset_id}")
def get_dataset(
    dataset_id: DatasetId, principal: DatasetsPrincipal, session: SessionDep
) -> DatasetPublic:
    return DatasetPublic.model_validate(_owned(session, dataset_id, principal.user.id))


@router.get(
    "/{dataset_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
def stream_dataset_events(
    dataset_id: DatasetId,
    principal: DatasetsPrincipal,
    session: ReadSessionDep,
    reads: ReadSessionsDep,
) -> StreamingResponse:
    """Server-sent events: `status` first and on each change, `progress` (as on GET) as
    ingestion moves, and `done` with the dataset once it is ready or failed; the stream ends then.

    A stream also ends after 5 minutes without `done`; reconnect to follow on. A comment line
    keeps a quiet stream alive every 15 seconds.
    """
    _owned(session, dataset_id, principal.user.id)
    session.close()  # the stream reads with short sessions of its own
    events = _dataset_events(reads, dataset_id)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _dataset_events(reads: sessionmaker[Session], dataset_id: str) -> AsyncIterator[str]:
    status, progress = None, None
    started = last_sent = time.monotonic()
    while time.monotonic() - started < MAX_STREAM_SECONDS:
        dataset = await run_in_threadpool(_read_dataset, reads, dataset_id)
        if dataset is None:
            return  # deleted while followed: a GET now answers 404
        if dataset.status != status:
            status = dataset.status
            yield _event("status", json.dumps({"status": str(status)}))
            last_sent = time.monotonic()
        if dataset.progress is not None and dataset.progress != progress:
            progress = dataset.progress
            yield _event("progress", progress.model_dump_json())
            last_sent = time.monotonic()
        if status in ENDED:
            yield _event("done", dataset.model_dump_json(by_alias=True))
            return
        if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await anyio.sleep(POLL_SECONDS)


def _read_dataset(reads: sessionmaker[Session], dataset_id: str) -> DatasetPublic | None:
    with reads() as session:
        dataset = session.get(Dataset, dataset_id)
        return None if dataset is None else DatasetPublic.model_validate(dataset)


def _event(name: str, data: str) -> str:
    return f"event: {name}\ndata: {data}\n\n"


@router.delete(
    "/{dataset_id}",
    responses={409: {"description": "a queued or running training job uses the dataset"}},
)
def delete_dataset(
    dataset_id: DatasetId, principal: DatasetsPrincipal, session: SessionDep, store: StoreDep
) -> DatasetPublic:
    """Delete the dataset's stored objects, then its row; answers the dataset as it was."""
    dataset = _owned(session, dataset_id, principal.user.id)
    training = session.scalar(
        select(TrainingJob.id).where(
            TrainingJob.dataset_id == dataset.id,
            TrainingJob.status.in_([TrainingStatus.queued, TrainingStatus.running]),
        )
    )
    if training is not None:
        raise ConflictError(
            f"dataset {dataset.id} is in use by training job {training}; "
            "cancel it or wait for it to end, then delete the dataset"
        )
    public = DatasetPublic.model_validate(dataset)
    # Objects first: a failure here leaves the row, so the delete can be retried.
    store.delete_prefix(dataset.storage_prefix)
    session.execute(delete(Dataset).where(Dataset.id == dataset.id))
    session.commit()
    return public


def _owned(session: Session, dataset_id: str, user_id: str) -> Dataset:
    return access.get_owned(session, Dataset, dataset_id, user_id, "dataset")

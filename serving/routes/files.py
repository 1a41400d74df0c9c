"""Downloads from the local artifact store, by HMAC-signed expiring URL (S3 presigns its own)."""

from __future__ import annotations

import mimetypes
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from goshen.config import StorageBackend
from goshen.storage import verify_signed_url
from serving.http.dependencies import SettingsDep, StoreDep

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get(
    "/{key:path}",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "the object's bytes, with its media type",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        },
        403: {"description": "the link's signature is wrong, or the link expired"},
        404: {"description": "no such object, or the store serves its own signed URLs"},
    },
)
def download(
    key: str,
    settings: SettingsDep,
    store: StoreDep,
    expires: Annotated[int, Query()],
    signature: Annotated[str, Query(max_length=128)],
) -> StreamingResponse:
    """Stream an artifact whose link was signed by this server and has not expired."""
    if settings.storage_backend is not StorageBackend.local:
        raise HTTPException(404, "files are served by the object store's own signed URLs")
    verify_signed_url(key, expires, signature, settings.signing_key)
    size = store.size(key)
    filename = key.rsplit("/", 1)[-1]
    media_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=60",
    }
    return StreamingResponse(store.stream(key), media_type=media_type, headers=headers)

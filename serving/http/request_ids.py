"""Request ids: every request gets one, answered in `X-Request-Id` and carried by every log line
about it (goshen.logs); a job keeps the id of the request that submitted it, so the worker's and
the webhook dispatcher's lines about the job carry it too.

A client (or the proxy in front of the API) may send its own `X-Request-Id`: one of at most
REQUEST_ID_MAX_LENGTH letters, digits and `._:-` is kept, anything else is replaced by a new id
(never echoed: it would reach logs and other clients' views of the job).

The API's edge (serving.http.edge) gives each request its id, in the log context while the app
handles it (uvicorn's access line included) and in the answer's header.
"""

from __future__ import annotations

import re
import secrets

from goshen.db.models.jobs import REQUEST_ID_MAX_LENGTH

HEADER = b"x-request-id"
_SAFE = re.compile(rb"[A-Za-z0-9._:-]{1,%d}" % REQUEST_ID_MAX_LENGTH)


def new_request_id() -> str:
    """32 hex digits (128 random bits), as W3C trace ids and uuid4().hex are written."""
    return secrets.token_hex(16)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-Id when it is sane (length, characters), else a new one."""
    for name, value in headers:
        if name == HEADER:
            return value.decode("ascii") if _SAFE.fullmatch(value) else new_request_id()
    return new_request_id()

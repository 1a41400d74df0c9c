"""415 for a body that is not JSON sent to a route that reads JSON.

FastAPI hands such a body (text/plain, or one with no Content-Type) to validation as a string,
which answers 422 about the fields instead of naming the content type to send.
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.params import Form
from fastapi.routing import APIRoute
from starlette.datastructures import Headers

JSON = "application/json"


async def json_bodies_only(request: Request) -> None:
    """Dependency for every route: 415 when the matched route reads JSON and the body is not."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute) and _reads_json(route):
        require_json(request)


def require_json(request: Request) -> None:
    """Raise 415 unless the request's body, if it has one, is declared JSON."""
    headers = request.headers
    if _has_body(headers) and not _is_json(headers.get("content-type")):
        allow = {"POST": "Accept-Post", "PATCH": "Accept-Patch"}.get(request.method)
        raise HTTPException(
            415,
            f"the body must be JSON: send it with Content-Type: {JSON}",
            headers={allow: JSON} if allow else None,
        )


def _reads_json(route: APIRoute) -> bool:
    return route.body_field is not None and not isinstance(route.body_field.field_info, Form)


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in headers


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == JSON or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )

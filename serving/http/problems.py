"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from goshen.errors import GoshenError, InvalidInputError, RateLimitedError, UnavailableError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    if request_id is not None:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    in_path = [error for error in exc.errors() if error["loc"][0] == "path"]
    if in_path:
        # A malformed id or name in the path (serving.http.paths) names nothing, as an unknown one.
        field, value = _field_name(tuple(in_path[0]["loc"])), repr(in_path[0]["input"])[:80]
        return problem(404, f"no {field} {value}: {in_path[0]['msg']}")
    errors = [
        {"field": _field_name(tuple(error["loc"])), "message": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]
    fields = ", ".join(dict.fromkeys(error["field"] for error in errors))
    return problem(422, f"invalid request: check {fields}", errors=errors)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _goshen_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GoshenError)
    errors = None
    if isinstance(exc, InvalidInputError) and exc.field is not None:
        errors = [{"field": exc.field, "message": str(exc), "type": "value_error"}]
    headers = None
    if isinstance(exc, RateLimitedError | UnavailableError):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    return problem(exc.status_code, str(exc), title=exc.title, errors=errors, headers=headers)


class ServerErrors:
    """ASGI middleware: an unexpected error answers 500 problem+json with a request id, which
    the log line with the traceback and the X-Request-ID header carry too.

    Starlette runs a handler for bare `Exception` in its outermost middleware and re-raises after
    answering, and uvicorn then drops the connection: the client's next request on it would fail.
    Answered here, the error ends with its response and the connection stays usable.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            request_id = uuid.uuid4().hex
            log.exception(
                "unhandled error on %s %r, request id %s",
                scope["method"],
                scope["path"],
                request_id,
            )
            if started:
                raise  # part of the answer is out: only the server closing the connection ends it
            detail = (
                "the server failed to handle this request; it has been logged with request id "
                f"{request_id}: quote it when you report this"
            )
            answer = problem(
                500, detail, request_id=request_id, headers={"X-Request-ID": request_id}
            )
            await answer(scope, receive, send)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error as problem+json. Call it after adding the other middleware, so that
    `ServerErrors` wraps them and answers their errors too."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(GoshenError, _goshen_error)
    app.add_middleware(ServerErrors)

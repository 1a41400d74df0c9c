"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import exc as database_errors
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from goshen import logs
from goshen.billing.rate_limits import Policy
from goshen.errors import (
    GoshenError,
    InvalidInputError,
    RateLimitedError,
    RateLimitExceededError,
    UnavailableError,
)

PROBLEM_JSON = "application/problem+json"
# How long a client should wait before trying again when the database does not answer.
DATABASE_RETRY_AFTER_SECONDS = 5
log = logging.getLogger(__name__)


class FieldError(BaseModel):
    """One invalid field: where, what is wrong, and the kind of error."""

    field: str = Field(description="the field, dotted for nested ones (`input.digit`)")
    message: str
    type: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    type: str = Field(
        default="about:blank",
        description="`about:blank`, or a URI naming a problem whose body has members of its own",
    )
    title: str = Field(description="the status's name, or the kind of error")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="what went wrong and what to do about it")
    errors: list[FieldError] | None = Field(
        default=None, description="each invalid field, on 422s about fields"
    )
    request_id: str | None = Field(
        default=None,
        description="the request's id (also its `X-Request-Id` header), which the server's log "
        "lines about it carry: quote it when you report a problem",
    )


class InsufficientCreditProblem(Problem):
    """402: available credit (balance less open holds) is short of what the request may cost."""

    type: str = Field(default="/problems/insufficient-credit")
    balance: int = Field(description="the account's balance, in micro-credits")
    available: int = Field(description="the balance less open holds, in micro-credits")
    required: int = Field(description="what the request may cost at most, in micro-credits")


class SpendCapProblem(Problem):
    """402: the request would take its API key past the key's monthly spend cap; the account's
    other keys are not affected."""

    type: str = Field(default="/problems/spend-cap-exceeded")
    cap: int = Field(description="the key's monthly spend cap, in micro-credits")
    spent: int = Field(description="what the key spent this month (UTC), in micro-credits")
    held: int = Field(description="what the key's unfinished requests hold, in micro-credits")
    required: int = Field(description="what the request may cost at most, in micro-credits")


class RateLimitProblem(Problem):
    """429: over a rate limit; `Retry-After`, `RateLimit-Policy` and `RateLimit` say when to
    try again."""

    type: str = Field(default="/problems/rate-limit-exceeded")
    policy: str = Field(
        description="the limit: `generate`, `predict` or `default` (per API key), or "
        "`failed-auth` (failed authentications per client address)"
    )
    quota: int = Field(description="requests the policy allows per window")
    window_seconds: int = Field(description="the policy's window, in seconds")


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
    type_: str = "about:blank",
    members: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **(members or {}),
    }
    if errors is not None:
        body["errors"] = errors
    request_id = request_id or logs.current_request_id()
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


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        detail = f"{request.method} is not allowed here; this path answers {', '.join(allowed)}"
    return problem(exc.status_code, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on the request's path (Starlette names only the first
    route that matched the path, and FastAPI makes one route per method)."""
    methods: set[str] = set()
    for route in _routes(request.app.router.routes):
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] != Match.NONE:
            methods.update(route_methods)
    return sorted(methods)


def _routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes an app's router holds, those of included routers among them (FastAPI keeps an
    included router as one route that holds its own)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)
        else:
            yield route


# SQLSTATEs that say the database is away or busy for now, not that the request is at fault:
# connection exceptions (class 08), an administrator's or a crash's shutdown, too many
# connections, and a transaction that lost a deadlock or a serialization race.
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})


def database_unavailable(exc: Exception) -> bool:
    """Whether a database error means "away or busy for now" (answered 503, Retry-After) rather
    than a bug (answered 500 with a request id): a lost or refused connection, a pool that ran
    dry, a server shutting down, SQLite's lock held too long."""
    if isinstance(exc, database_errors.TimeoutError):
        return True
    if not isinstance(exc, database_errors.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(exc, database_errors.OperationalError | database_errors.InterfaceError):
        if "database is locked" in str(exc.orig):
            return True
        # psycopg gives no SQLSTATE to a connection that failed before the server answered.
        if sqlstate is None and type(exc.orig).__module__.startswith("psycopg"):
            return True
    return sqlstate is not None and (sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES)


async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    if not database_unavailable(exc):
        raise exc  # a bug: the edge answers 500 with a request id and logs the traceback
    # The driver's message can name hosts and users: it goes to the log, not to the caller.
    log.warning("the database did not answer: %s", exc)
    return problem(
        503,
        "the database does not answer for now; try again shortly",
        title="Service unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def _goshen_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GoshenError)
    errors = None
    if isinstance(exc, InvalidInputError) and exc.field is not None:
        errors = [{"field": exc.field, "message": str(exc), "type": "value_error"}]
    headers = None
    if isinstance(exc, RateLimitedError | UnavailableError):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    if isinstance(exc, RateLimitExceededError):
        policy = Policy(exc.policy, exc.quota, exc.window_seconds)
        headers = {
            **(headers or {}),
            "RateLimit-Policy": policy.policy_field,
            "RateLimit": policy.state_field(0, exc.retry_after_seconds),
        }
    return problem(
        exc.status_code,
        str(exc),
        title=exc.title,
        errors=errors,
        headers=headers,
        type_=exc.type,
        members=exc.members(),
    )


def server_error(scope: Scope, request_id: str) -> JSONResponse:
    """The answer to an error nothing handled (call it from an `except` block): logged with its
    traceback and the request's id, then a 500 problem+json that carries the id.

    The API's edge (serving.http.edge) sends it for whatever the app raised before answering.
    Starlette runs a handler for bare `Exception` in its outermost middleware and re-raises after
    answering, and uvicorn then drops the connection: the client's next request on it would fail.
    Answered by the edge, the error ends with its response and the connection stays usable.
    """
    log.exception(
        "unhandled error on %s %r, request id %s", scope["method"], scope["path"], request_id
    )
    detail = (
        "the server failed to handle this request; it has been logged with request id "
        f"{request_id}: quote it when you report this"
    )
    return problem(500, detail, request_id=request_id)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error as problem+json (the API's edge, serving.http.edge, answers the
    unexpected ones with `server_error`)."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(GoshenError, _goshen_error)
    # A lost connection, a server that does not answer, a pool that ran dry, SQLite's lock.
    for unavailable in (database_errors.DBAPIError, database_errors.TimeoutError):
        app.add_exception_handler(unavailable, _database_error)

"""The OpenAPI document as the API answers it: every status a route can answer, errors as
`application/problem+json` with their schema.

Routes declare the answers that are theirs (a 409 when a job already ended, a 429 at a cap); the
ones every route of a kind shares are added here from what the route is, so none is forgotten:

- an API key in `Authorization` (the route's security): 401 without a valid one, 403 when it
  lacks the route's scope or is not an admin's, 429 over the key's rate limit or its address's
  failed authentications (serving.http.rate_limits);
- an id or name in the path: 404 when it names nothing this key may see, a malformed one included;
- a body: 400 when it cannot be parsed (JSON nested too deep, a number too large), 413 past the
  size limit, 415 in another content type, 422 when a field is wrong;
- parameters: 422 when one is wrong;
- every route: 500 for an unexpected error (its `request_id` is in the server's log), and 503
  when a dependency it needs (the database, the registry, the store) does not answer.

What a creation answers links to the operations on what it created (OpenAPI links), so clients
and tools (schemathesis's stateful phase) can follow a job from its submission to its cancel;
event streams, which stay open while what they follow lives, are left out of them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serving.http.problems import (
    PROBLEM_JSON,
    InsufficientCreditProblem,
    Problem,
    RateLimitProblem,
    SpendCapProblem,
)

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Routes that answer without the database (liveness) answer no 503.
_NO_DEPENDENCY = frozenset({"/healthz"})

UNAUTHORIZED = "no API key, or one that is unknown or revoked, or whose user is disabled"
FORBIDDEN = "the API key lacks the scope this route needs"
FORBIDDEN_ADMIN = "admin routes need an admin user's key with the 'admin' scope"
NOT_FOUND = "nothing by that id or name that this key may see (a malformed one included)"
UNPARSEABLE = "the body cannot be parsed: JSON nested too deeply, or a number too large"
TOO_LARGE = "the body is larger than the server accepts (GOSHEN_MAX_REQUEST_BYTES)"
NOT_JSON = "the body is not JSON: send it with Content-Type: application/json"
INVALID = "a parameter or a field of the body is invalid: `errors` names each and what to fix"
SERVER_ERROR = "an unexpected error: quote the `request_id`, which the server's log holds too"
UNAVAILABLE = "a dependency (the database, the registry, the store) does not answer for now"
RATE_LIMITED = (
    "over this API key's rate limit for the route's class, or over the failed authentications "
    "allowed from the client's address: try again after `Retry-After` seconds"
)
_RATE_LIMIT_HEADERS = {
    "Retry-After": {
        "description": "seconds until a retry may succeed",
        "schema": {"type": "integer"},
    },
    "RateLimit-Policy": {
        "description": "the policy exceeded (draft-ietf-httpapi-ratelimit-headers), e.g. "
        '`"generate";q=600;w=60`',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'what remains of it, e.g. `"generate";r=0;t=12`',
        "schema": {"type": "string"},
    },
}

# (the creating operation's path, the path parameter, the field of its 201 answer that fills it,
# the path of what it created): linked to every operation on that path and below it.
_CREATED = (
    ("/v1/generate", "job_id", "id", "/v1/jobs/{job_id}"),
    ("/v1/keys", "key_id", "id", "/v1/keys/{key_id}"),
    ("/v1/datasets", "dataset_id", "id", "/v1/datasets/{dataset_id}"),
    ("/v1/training-jobs", "job_id", "id", "/v1/training-jobs/{job_id}"),
    ("/v1/models", "name", "name", "/v1/models/{name}"),
    ("/v1/admin/users", "user_id", "id", "/v1/admin/users/{user_id}"),
    ("/v1/admin/users/{user_id}/keys", "key_id", "id", "/v1/admin/keys/{key_id}"),
    ("/v1/admin/models", "name", "name", "/v1/admin/models/{name}"),
)


def install_openapi(app: FastAPI) -> None:
    """Serve `complete(...)` of FastAPI's document at /openapi.json."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add the statuses shared by each kind of route, and make every error problem+json."""
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if method in _METHODS:
                _complete_operation(path, operation)
    _link_creations(document["paths"])
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    for model in (Problem, InsufficientCreditProblem, SpendCapProblem, RateLimitProblem):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return document


def problem_response(description: str, *schemas: str) -> dict[str, Any]:
    """A route's `responses=` entry for problems whose bodies have schemas of their own (the
    names of problem models in serving.http.problems; several: the body is one of them)."""
    refs = [{"$ref": f"#/components/schemas/{schema}"} for schema in schemas]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    return {"description": description, "content": {PROBLEM_JSON: {"schema": schema}}}


def _complete_operation(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    parameters = operation.get("parameters", [])
    body = operation.get("requestBody")

    def add(status: int, description: str) -> None:
        responses.setdefault(str(status), {"description": description})

    if operation.get("security"):
        add(401, UNAUTHORIZED)
        add(403, FORBIDDEN_ADMIN if path.startswith("/v1/admin/") else FORBIDDEN)
        _add_rate_limited(responses)
    if any(parameter["in"] == "path" for parameter in parameters):
        add(404, NOT_FOUND)
    if body is not None:
        content = body.get("content", {})
        add(400, UNPARSEABLE)
        add(413, TOO_LARGE)
        if "application/json" in content:
            add(415, NOT_JSON)
        else:
            add(415, f"the body is not {' or '.join(content)}")
    if body is not None or parameters:
        add(422, INVALID)
    add(500, SERVER_ERROR)
    if path not in _NO_DEPENDENCY:
        add(503, UNAVAILABLE)
    for status, response in responses.items():
        if int(status) >= 400 and _describes_no_body(response):
            response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}


def _add_rate_limited(responses: dict[str, Any]) -> None:
    """429 with its headers; a route's own 429 (a cap) keeps its description and the generic
    Problem schema, which the rate limit's body fits too."""
    own = responses.get("429")
    if own is None:
        responses["429"] = problem_response(RATE_LIMITED, "RateLimitProblem")
    else:
        own["description"] = f"{own['description']}; or {RATE_LIMITED}"
    responses["429"].setdefault("headers", {}).update(_RATE_LIMIT_HEADERS)


def _describes_no_body(response: dict[str, Any]) -> bool:
    """Whether a response has no body schema of its own (or FastAPI's validation error's)."""
    content = response.get("content")
    if not content:
        return True
    schemas = [media.get("schema") for media in content.values()]
    return all(
        not schema or schema.get("$ref", "").rsplit("/", 1)[-1] in _FASTAPI_VALIDATION
        for schema in schemas
    )


def _link_creations(paths: dict[str, Any]) -> None:
    for creator, parameter, field, created in _CREATED:
        answer = paths.get(creator, {}).get("post", {}).get("responses", {}).get("201")
        if answer is None:
            continue
        links = answer.setdefault("links", {})
        for path, operations in paths.items():
            if path != created and not path.startswith(f"{created}/"):
                continue
            for method, operation in operations.items():
                if method in _METHODS and "operationId" in operation and not _streams(operation):
                    links[operation["operationId"]] = {
                        "operationId": operation["operationId"],
                        "parameters": {parameter: f"$response.body#/{field}"},
                    }


def _streams(operation: dict[str, Any]) -> bool:
    answer = operation.get("responses", {}).get("200", {})
    return "text/event-stream" in answer.get("content", {})

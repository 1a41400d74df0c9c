"""A cap on request bodies (GOSHEN_MAX_REQUEST_BYTES), enforced before the route sees them.

JSON bodies are parsed whole in memory, so an unbounded one is a way to exhaust a replica. The
API's edge (serving.http.edge) reads the body first (by Content-Length when one is sent, else as
it streams) and answers 413 past the cap; the route gets the body it read. Routes that stream
uploads to disk with limits of their own (datasets) are left to those limits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request

from serving.http.problems import problem

# Where the body read waits for `body_of`.
_BODY_FIELD = "goshen.body"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """413 for a body over `max_bytes`, by its Content-Length or as it streams."""

    def __init__(self, *, max_bytes: int, exempt: tuple[tuple[str, str], ...] = ()) -> None:
        self.max_bytes = max_bytes
        self.exempt = exempt  # (method, path) of routes with limits of their own

    async def admit(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """`receive` for the app: one that hands it the body read already (the client's own for
        exempt routes); or None, when the body was over the cap and `send` answered 413."""
        if self._exempt(scope):
            return receive
        declared = _content_length(scope)
        body = (
            None
            if declared is not None and declared > self.max_bytes
            else await self._read(receive)
        )
        if body is None:
            await problem(413, self._detail(), title="Content too large")(scope, receive, send)
            return None
        scope[_BODY_FIELD] = body
        return _replaying(body, receive)

    def _exempt(self, scope: Scope) -> bool:
        # Behind a proxy prefix (uvicorn --root-path) the route's own path follows it.
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        route = (scope["method"], path.rstrip("/"))
        return route in self.exempt

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the cap (the rest is left unread)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # the client went away; the route will see it too
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _detail(self) -> str:
        return (
            f"the request body is larger than {self.max_bytes} bytes "
            "(GOSHEN_MAX_REQUEST_BYTES); send less"
        )


async def body_of(request: Request) -> bytes:
    """The request's body: the one `BodyLimit.admit` read, without a second pass through
    Starlette's stream (the hottest route's), else read now."""
    body = request.scope.get(_BODY_FIELD)
    return body if isinstance(body, bytes) else await request.body()


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` for the route: the body read already, then the client's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

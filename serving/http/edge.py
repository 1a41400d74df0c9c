"""The API's edge: one pure-ASGI layer around every HTTP request, doing in one pass what the API
needs of each request before and after its route:

- its id (serving.http.request_ids): in the log context while the app handles it (uvicorn's
  access line included), and in the answer's `X-Request-Id`;
- the body cap (serving.http.body_limit): 413 past GOSHEN_MAX_REQUEST_BYTES, before the route;
- the answer's `RateLimit-Policy` when the request counted against a rate limit
  (serving.http.rate_limits.policy_header);
- Prometheus' count and latency by method, route template and status (ApiMetrics.answered);
- a 500 problem+json with the request's id for an error nothing handled
  (serving.http.problems.server_error), so the connection stays usable.

These were five middlewares, each a coroutine more per request and a wrapper more around
`send`: a third of what the API process spent on a /predict (bench/predict_vs_mlflow.py).
One layer runs them at the cost of one. The same edge also wraps the direct routes, which are
served ahead of FastAPI's own stack (serving.http.direct_routes).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from goshen import logs
from serving.http.body_limit import BodyLimit
from serving.http.metrics import ApiMetrics
from serving.http.problems import server_error
from serving.http.rate_limits import policy_header
from serving.http.request_ids import HEADER, request_id_from


class Edge:
    """ASGI middleware: what every HTTP request gets (see the module's docstring)."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics, body_limit: BodyLimit) -> None:
        self.app = app
        self.metrics = metrics
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        id_header = (HEADER, request_id.encode("ascii"))
        status = 500  # what the client gets if the app raises before answering
        started = False

        async def sending(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = [*message.get("headers", ()), id_header]
                policy = policy_header(scope)
                if policy is not None:
                    headers.append(policy)
                message["headers"] = headers
            await send(message)

        token = logs.bind_request(request_id)
        try:
            admitted = await self.body_limit.admit(scope, receive, sending)
            if admitted is not None:
                await self.app(scope, admitted, sending)
        except Exception:
            answer = server_error(scope, request_id)
            if started:
                raise  # part of the answer is out: only the server closing the connection ends it
            await answer(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.answered(scope["method"], route, status, time.perf_counter() - arrived)
            logs.unbind(token)

"""Direct routes, for the hottest path (/predict): served ahead of FastAPI's own stack, with no
FastAPI dependency resolution and no trip through Starlette's routing either.

A `DirectRoute` calls its endpoint with the request, the API's state and the path parameters;
the route checks its own body. `DirectRoutesApp` is the FastAPI app whose outermost layer,
`DirectRoutes`, hands the requests such a route matches straight to it, inside the API's edge
(serving.http.edge: request id, body cap, rate-limit header, metrics, 500 problems). Without
it they would take Starlette's outer middlewares, FastAPI's (telemetry, body limit: both idle
here), the edge, Starlette's exception middleware, FastAPI's exit stack, the router (which tries
the docs routes first) and FastAPI's route wrappers: layers that cost /predict about half of its
time in the API process (cProfile and py-spy on the loaded server). The route's errors are
answered by the app's exception handlers, as Starlette's exception middleware would answer them.
Every other request goes on through the app unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.http.dependencies import api_state

Handler = Callable[[Request, Exception], Any]
# URLs whose match DirectRoutes keeps (past it, it starts over), and the longest path kept.
MAX_MATCHED_URLS = 10_000
MAX_KEPT_PATH = 256


class DirectRoute(APIRoute):
    """Calls the endpoint with the path parameters, the request and the API's state, skipping
    FastAPI's dependency resolution and validation: the route checks its own body. The OpenAPI
    document still comes from the endpoint's signature and `openapi_extra`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            state = api_state(request)
            response: Response = await endpoint(request=request, state=state, **request.path_params)
            return response

        return handle


class _Matched(NamedTuple):
    route: DirectRoute
    serve: ASGIApp  # the route's endpoint inside the edge
    path_params: dict[str, Any]


class DirectRoutes:
    """ASGI: requests for one of `routes`' DirectRoutes go straight to it, inside `edge` (see the
    module's docstring); every other request to `app`. `fastapi`'s exception handlers answer the
    direct routes' errors."""

    def __init__(
        self,
        app: ASGIApp,
        fastapi: FastAPI,
        routes: Sequence[BaseRoute],
        edge: Callable[[ASGIApp], ASGIApp],
    ) -> None:
        self.app = app
        self.routes = [
            (route, edge(partial(self._serve, route.get_route_handler())))
            for route in routes
            if isinstance(route, DirectRoute)
        ]
        # The direct route each recent (method, root path, path) matched: a request for the same
        # URL costs a dict lookup instead of the routes' regular expressions.
        self._matched: dict[tuple[str, str, str], _Matched] = {}
        self.status_handlers: dict[int, Handler] = {}
        self.exception_handlers: dict[type[Exception], Handler] = {}
        for key, handler in fastapi.exception_handlers.items():
            if isinstance(key, int):
                self.status_handlers[key] = handler
            else:
                self.exception_handlers[key] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope) if scope["type"] == "http" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        route, serve, path_params = matched
        scope["endpoint"] = route.endpoint
        scope["path_params"] = dict(path_params)
        scope["route"] = route
        await serve(scope, receive, send)

    def _match(self, scope: Scope) -> _Matched | None:
        """The direct route this request is for (Starlette's own matching of path and method,
        without FastAPI's route contexts), with its path parameters; None for any other."""
        url = (scope["method"], scope.get("root_path", ""), scope["path"])
        matched = self._matched.get(url)
        if matched is not None:
            return matched
        for route, serve in self.routes:
            match, child_scope = Route.matches(route, scope)
            if match is Match.FULL:
                matched = _Matched(route, serve, child_scope["path_params"])
                # Only matches are kept, and only short URLs: a client must not fill memory
                # with URLs of its choosing before it has even authenticated.
                if len(scope["path"]) <= MAX_KEPT_PATH:
                    if len(self._matched) >= MAX_MATCHED_URLS:
                        self._matched.clear()  # rare: URLs are matched again as they come
                    self._matched[url] = matched
                return matched
        return None

    async def _serve(
        self,
        handle: Callable[[Request], Coroutine[Any, Any, Response]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        request = Request(scope, receive, send)
        try:
            response = await handle(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Handler | None:
        """The handler Starlette's exception middleware would pick: by status for an
        HTTPException, else by the nearest class in the exception's MRO."""
        if isinstance(exc, HTTPException) and exc.status_code in self.status_handlers:
            return self.status_handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in self.exception_handlers:
                return self.exception_handlers[cls]
        return None


class DirectRoutesApp(FastAPI):
    """FastAPI, with the routes given to `serve_directly` served ahead of its middleware stack."""

    _direct: tuple[Sequence[BaseRoute], Callable[[ASGIApp], ASGIApp]] | None = None

    def serve_directly(
        self, routes: Sequence[BaseRoute], edge: Callable[[ASGIApp], ASGIApp]
    ) -> None:
        """Serve `routes`' DirectRoutes through `edge` alone (call it before the first request)."""
        self._direct = (routes, edge)

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if self._direct is None:
            return stack
        if self.max_body_size is not None:  # it would sit in the stack the direct routes skip
            raise RuntimeError("the edge caps bodies (GOSHEN_MAX_REQUEST_BYTES), not FastAPI")
        return DirectRoutes(stack, self, *self._direct)

"""Direct routes, for the hottest path (/predict): no FastAPI dependency resolution, and no trip
through Starlette's routing either.

A `DirectRoute` calls its endpoint with the request, the API's state and the path parameters;
the route checks its own body. `DirectRoutes`, the innermost middleware, hands the requests such
a route matches straight to it. Starlette would take them through its exception middleware,
FastAPI's exit stack, the router (which tries the docs routes first) and FastAPI's route
wrappers: layers that cost /predict about a fifth of its time in the API process (cProfile on
the loaded server). Everything outside still applies (body size limit, rate-limit headers,
metrics, request ids, problem answers to unexpected errors), and the route's errors are answered
by the app's exception handlers as Starlette's exception middleware would answer them. Every
other request goes on through the app unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.http.dependencies import api_state

Handler = Callable[[Request, Exception], Any]


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


class DirectRoutes:
    """ASGI middleware: requests for one of `routes`' DirectRoutes go straight to it (see the
    module's docstring); `app` is the FastAPI app whose exception handlers answer their errors.
    Add it before every other middleware, so that it runs inside them all."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = [
            (route, route.get_route_handler()) for route in routes if isinstance(route, DirectRoute)
        ]
        self.status_handlers: dict[int, Handler] = {}
        self.exception_handlers: dict[type[Exception], Handler] = {}
        for key, handler in fastapi.exception_handlers.items():
            if isinstance(key, int):
                self.status_handlers[key] = handler
            else:
                self.exception_handlers[key] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route, handle in self.routes:
                # Starlette's own matching (path and method), without FastAPI's route contexts.
                match, child_scope = Route.matches(route, scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    scope["route"] = route
                    await self._serve(handle, scope, receive, send)
                    return
        await self.app(scope, receive, send)

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

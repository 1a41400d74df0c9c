"""`goshen api`: the API on uvicorn, with what a server that faces its clients needs.

- **SIGTERM stops it within GOSHEN_SHUTDOWN_GRACE_SECONDS.** Event streams can stay open for
  hours, and uvicorn waits for open responses before it stops; so the first thing the server
  does when it begins to stop is tell every open stream to end (`StreamHub.begin_shutdown`: each
  sends a `shutdown` event and closes, and its client resumes with `Last-Event-ID` on another
  process). Requests in progress then get most of the grace period (uvicorn's graceful-shutdown
  timeout, whole seconds); the app's own shutdown (background threads, databases) the rest.
- **A client must send a request's headers within GOSHEN_API_HEADER_TIMEOUT_SECONDS** of opening
  the connection, or of the first byte of its next request on a kept-alive one (uvicorn's
  keep-alive timeout bounds the wait between requests); otherwise it gets a 408 and the
  connection is closed. uvicorn has no such timeout, so a client sending a byte a second would
  hold its connection as long as it liked.
- **One client address holds at most GOSHEN_API_MAX_CONNECTIONS_PER_CLIENT connections**; more
  are closed as soon as they open. The address is the TCP peer's: behind a proxy or load
  balancer every connection comes from the proxy, so the cap protects an API exposed directly,
  and behind a proxy the proxy's own limits are the ones that count (set the cap above what the
  proxy opens).

- **What a turn of the event loop writes to a connection goes out in one write**
  (serving.http.coalesced_writes): an answer's head and body in one system call and one segment.

The limits and the writes live in uvicorn's HTTP protocols, subclassed: httptools' when it is
installed (as uvicorn would pick), else h11's.
`uvicorn serving.app:create_app --factory` serves the same app without these protections.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
from collections import Counter
from types import FrameType
from typing import Any, cast

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from goshen.config import Settings
from serving.app import create_app
from serving.http.coalesced_writes import CoalescedWrites
from serving.http.problems import PROBLEM_JSON, Problem
from serving.http.streams import StreamHub

log = logging.getLogger(__name__)

# The share of the grace period requests in progress get; the app's shutdown has the rest.
REQUESTS_SHARE_OF_GRACE = 0.75


def serve(settings: Settings) -> int:
    """Serve the API until SIGTERM or Ctrl-C; the exit status (0 stopped, 130 interrupted)."""
    app = create_app(settings)
    server = ApiServer(api_config(app, settings), app.state.streams)
    server.run()
    return 130 if signal.SIGINT in server.stop_signals else 0


def api_config(
    app: FastAPI, settings: Settings, protocol: type[asyncio.Protocol] | None = None
) -> ApiConfig:
    """uvicorn's settings for `app` under Goshen's: address, log level, shutdown and limits
    (`protocol`: a guarded one; by default guarded_protocol())."""
    return ApiConfig(
        app,
        host=settings.host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        # Its lines, access lines included, go through the process's logging (goshen.logs:
        # GOSHEN_LOG_FORMAT, each request's id), not through handlers of uvicorn's own.
        log_config=None,
        # At WARNING and above no access line is written, but uvicorn would format one per answer.
        access_log=logging.getLevelName(settings.log_level) <= logging.INFO,
        timeout_graceful_shutdown=graceful_shutdown_seconds(settings.shutdown_grace_seconds),
        header_timeout=settings.api_header_timeout_seconds,
        max_connections_per_client=settings.api_max_connections_per_client,
        protocol=protocol,
    )


def graceful_shutdown_seconds(grace: float) -> int:
    """How long requests in progress may run after SIGTERM (uvicorn's setting is typed as whole
    seconds)."""
    return max(1, math.floor(grace * REQUESTS_SHARE_OF_GRACE))


class ClientConnections:
    """Open connections by client address, capped: one server's count, shared by its
    connections (all on the event loop's thread)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: Counter[str] = Counter()
        self._refusing: set[str] = set()

    def admit(self, address: str) -> bool:
        """Count a new connection from `address`; False (not counted) if it is at the cap."""
        if self._open[address] >= self.cap:
            if address not in self._refusing:  # once per episode: a flood must not flood the log
                self._refusing.add(address)
                log.warning(
                    "%s holds %d connections, GOSHEN_API_MAX_CONNECTIONS_PER_CLIENT: closing "
                    "its new ones until some close",
                    address,
                    self.cap,
                )
            return False
        self._open[address] += 1
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]
        self._refusing.discard(address)


class ApiConfig(uvicorn.Config):
    """uvicorn's Config, on a guarded protocol (httptools' when installed, as uvicorn would pick,
    else h11's), carrying the limits that protocol enforces."""

    def __init__(
        self,
        app: Any,
        *,
        header_timeout: float,
        max_connections_per_client: int,
        protocol: type[asyncio.Protocol] | None = None,
        **options: Any,
    ) -> None:
        # No WebSocket routes: an upgraded connection would leave the protocol and its count.
        http = protocol or guarded_protocol()
        super().__init__(app, http=http, ws="none", **options)
        self.header_timeout = header_timeout
        self.clients = ClientConnections(max_connections_per_client)


def guarded_protocol() -> type[asyncio.Protocol]:
    """httptools' protocol when httptools is installed (it parses faster: bench/predict_overhead.py
    --servers), else h11's; each with the limits of _Guard."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return GuardedH11Protocol
    return GuardedHttpToolsProtocol


class _Guard:
    """A deadline for each request's headers and a cap on the connections per client address,
    for a uvicorn HTTP protocol (see the module docstring). The protocol calls `_guard_open`,
    `_guard_closed`, `_start_header_deadline` when a request (or a new connection) begins and
    `_cancel_header_deadline` when its headers are in, and says through `_awaiting_headers` and
    `_may_answer` whether a 408 is due and may be written."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # Cooperative: the next class in the protocol's MRO is uvicorn's protocol.
        super().__init__(config, server_state, app_state, _loop)  # type: ignore[call-arg]
        assert isinstance(config, ApiConfig), f"{type(self).__name__} serves an ApiConfig"
        self.header_timeout = config.header_timeout
        self.clients = config.clients
        self.counted_as: str | None = None
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # One write per turn of the loop: an answer's head and body go out together. (uvloop's
        # transports are not asyncio.Transport subclasses, though they have all of its methods.)
        coalesced = CoalescedWrites(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(coalesced)  # type: ignore[misc]
        self._guard_open()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard_closed()
        super().connection_lost(exc)  # type: ignore[misc]

    def _guard_open(self) -> bool:
        """Count the new connection, or close it when its address is at the cap."""
        address = self.client[0] if self.client else None  # None on a Unix socket: not capped
        if address is not None:
            if not self.clients.admit(address):
                self.transport.close()
                return False
            self.counted_as = address
        self._start_header_deadline()
        return True

    def _guard_closed(self) -> None:
        self._cancel_header_deadline()
        if self.counted_as is not None:
            self.clients.release(self.counted_as)
            self.counted_as = None

    def _start_header_deadline(self) -> None:
        if self.header_deadline is None:
            self.header_deadline = self.loop.call_later(
                self.header_timeout, self._headers_timed_out
            )

    def _cancel_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _awaiting_headers(self) -> bool:
        raise NotImplementedError

    def _may_answer(self) -> bool:
        raise NotImplementedError

    def _headers_timed_out(self) -> None:
        self.header_deadline = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        if self._may_answer():
            self.transport.write(self._request_timeout_response())
        self.transport.close()

    def _request_timeout_response(self) -> bytes:
        detail = (
            f"the request's headers did not arrive within {self.header_timeout:g} s of the "
            "connection opening (or of the request's first byte); send them at once"
        )
        body = Problem(title="Request Timeout", status=408, detail=detail).model_dump_json(
            exclude_none=True
        )
        return (
            b"HTTP/1.1 408 Request Timeout\r\n"
            + f"content-type: {PROBLEM_JSON}\r\ncontent-length: {len(body)}\r\n".encode()
            + b"connection: close\r\n\r\n"
            + body.encode()
        )


class GuardedH11Protocol(_Guard, H11Protocol):
    """uvicorn's h11 protocol, guarded (_Guard)."""

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            # The first bytes of a request on a kept-alive connection start its deadline (on a
            # new connection it has been running since it opened).
            self._start_header_deadline()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_deadline()  # the headers are in (or the request was refused)

    def _awaiting_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _may_answer(self) -> bool:
        return self.conn.our_state is h11.IDLE


class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):
    """uvicorn's httptools protocol, guarded (_Guard)."""

    headers_pending = True  # a new connection owes its first request's headers

    def on_message_begin(self) -> None:
        # A request's first byte (on a new connection its deadline has been running since it
        # opened).
        self.headers_pending = True
        self._start_header_deadline()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.headers_pending = False
        self._cancel_header_deadline()
        super().on_headers_complete()

    def _awaiting_headers(self) -> bool:
        return self.headers_pending

    def _may_answer(self) -> bool:
        return self.cycle is None or self.cycle.response_complete


class ApiServer(uvicorn.Server):
    """uvicorn's Server that ends the app's open streams first when it begins to stop."""

    def __init__(self, config: uvicorn.Config, streams: StreamHub) -> None:
        super().__init__(config)
        self.streams = streams
        self.stop_signals: list[int] = []

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # On the loop, before uvicorn waits for open responses: a stream ends only when told.
        log.info("stopping: ending %d open streams and long polls", self.streams.open_streams)
        self.streams.begin_shutdown()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # As uvicorn does (a second Ctrl-C stops waiting), but noting the signal instead of
        # raising it again once stopped: `serve` turns it into an exit status.
        self.stop_signals.append(sig)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

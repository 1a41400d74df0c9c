"""`goshen api`'s connection limits (serving/server.py), on a real uvicorn and real sockets: a
client that sends its headers a byte a second is cut off within GOSHEN_API_HEADER_TIMEOUT_SECONDS,
and one address holds at most GOSHEN_API_MAX_CONNECTIONS_PER_CLIENT connections."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from goshen.config import Settings
from serving.app import create_app
from serving.server import (
    ApiServer,
    GuardedH11Protocol,
    GuardedHttpToolsProtocol,
    api_config,
    guarded_protocol,
)

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # connections, not the database

HEADER_TIMEOUT = 2.0
# The machine is shared and noisy: how late past the timeout a cut-off may come.
SLACK = 3.0
SLOW_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: goshen.test\r\nUser-Agent: a-byte-a-second\r\n\r\n"


@pytest.fixture(params=[GuardedHttpToolsProtocol, GuardedH11Protocol], ids=["httptools", "h11"])
def protocol(request: pytest.FixtureRequest) -> type[asyncio.Protocol]:
    """Each guarded protocol: httptools' is what `goshen api` runs, h11's where httptools is not
    installed."""
    chosen: type[asyncio.Protocol] = request.param
    return chosen


@contextmanager
def guarded_api(
    settings: Settings, protocol: type[asyncio.Protocol], **overrides: object
) -> Iterator[tuple[str, int]]:
    """`goshen api`'s server (in a thread, so without its signal handling) on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served = Settings(**{**settings.model_dump(), "_env_file": None, "api_port": port, **overrides})
    app = create_app(served)
    server = ApiServer(api_config(app, served, protocol), app.state.streams)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class ConnectionClosedError(Exception):
    """The server closed the connection before it answered."""


def _send_slowly(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send `data` one byte a second until it is all sent, `stop` is set or the server hangs up."""
    for byte in data:
        if stop.is_set():
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        stop.wait(1)


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _get(sock: socket.socket) -> bytes:
    """One GET /healthz on a kept-alive connection; the response's status line."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: goshen.test\r\n\r\n")
    sock.settimeout(10)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionClosedError(f"the connection closed after {received!r}")
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head.split(b"\r\n")[0]


def test_a_client_sending_its_headers_a_byte_a_second_is_cut_off(
    settings: Settings, protocol: type[asyncio.Protocol]
) -> None:
    stop = threading.Event()
    with (
        guarded_api(settings, protocol, api_header_timeout_seconds=HEADER_TIMEOUT) as address,
        ExitStack() as cleanup,
    ):
        cleanup.callback(stop.set)
        kept_alive = cleanup.enter_context(socket.create_connection(address))
        assert _get(kept_alive) == b"HTTP/1.1 200 OK"
        # Idle between requests longer than the header timeout (uvicorn's keep-alive timeout,
        # 5 s, bounds that), then answered again: the deadline runs only while headers arrive.
        time.sleep(HEADER_TIMEOUT + 0.5)
        assert _get(kept_alive) == b"HTTP/1.1 200 OK"
        time.sleep(HEADER_TIMEOUT / 2)
        fresh = cleanup.enter_context(socket.create_connection(address))
        started = time.monotonic()
        for sock in (fresh, kept_alive):
            threading.Thread(target=_send_slowly, args=(sock, SLOW_REQUEST, stop)).start()
        # Meanwhile the API answers everyone else.
        healthz = httpx.get(f"http://{address[0]}:{address[1]}/healthz", timeout=10)
        assert healthz.status_code == 200

        replies, took = [], []
        for sock in (fresh, kept_alive):
            replies.append(_read_until_closed(sock, timeout=HEADER_TIMEOUT + SLACK + 10))
            took.append(time.monotonic() - started)

    # Sending the whole request would have taken over a minute.
    assert len(SLOW_REQUEST) > 60
    for reply, seconds in zip(replies, took, strict=True):
        assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply
        assert b"application/problem+json" in reply and b"send them at once" in reply
        assert seconds < HEADER_TIMEOUT + SLACK, f"cut off after {seconds:.1f} s"
    # On the kept-alive connection the deadline started with the slow request's first byte.
    assert took[1] >= HEADER_TIMEOUT - 0.5, f"cut off after {took[1]:.1f} s"


def test_a_client_that_opens_a_connection_and_says_nothing_is_cut_off(
    settings: Settings, protocol: type[asyncio.Protocol]
) -> None:
    with (
        guarded_api(settings, protocol, api_header_timeout_seconds=HEADER_TIMEOUT) as address,
        socket.create_connection(address) as silent,
    ):
        started = time.monotonic()
        reply = _read_until_closed(silent, timeout=HEADER_TIMEOUT + SLACK + 10)
        seconds = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert seconds < HEADER_TIMEOUT + SLACK, f"cut off after {seconds:.1f} s"


def test_one_address_holds_at_most_the_cap_of_connections(
    settings: Settings, protocol: type[asyncio.Protocol]
) -> None:
    cap = 5
    overrides = {"api_max_connections_per_client": cap, "api_header_timeout_seconds": 60}
    with guarded_api(settings, protocol, **overrides) as address, ExitStack() as cleanup:
        held = [cleanup.enter_context(socket.create_connection(address)) for _ in range(cap)]
        # Each is accepted, in order, before the next one is: the first `cap` are counted.
        with socket.create_connection(address) as one_too_many:
            started = time.monotonic()
            assert _read_until_closed(one_too_many, timeout=10) == b""
            assert time.monotonic() - started < SLACK, "the connection over the cap stayed open"
        # The ones held, idle until now, are served.
        assert [_get(sock) for sock in held] == [b"HTTP/1.1 200 OK"] * cap

        held.pop().close()
        deadline = time.monotonic() + 10
        # The server counts the closed one out once it sees it close: then one more is served.
        while not _served(address):
            assert time.monotonic() < deadline, "a closed connection stayed counted"
            time.sleep(0.2)


def _served(address: tuple[str, int]) -> bool:
    """Whether a new connection gets an answer (False: the server closed it unanswered)."""
    with socket.create_connection(address) as sock:
        try:
            return _get(sock) == b"HTTP/1.1 200 OK"
        except (ConnectionClosedError, ConnectionResetError):
            return False


def test_goshen_api_serves_with_httptools_when_it_is_installed(settings: Settings) -> None:
    assert guarded_protocol() is GuardedHttpToolsProtocol
    assert api_config(create_app(settings), settings).http is GuardedHttpToolsProtocol


def _responses(sock: socket.socket, count: int) -> list[bytes]:
    """The next `count` responses on a connection, each head and body, in the order they came."""
    sock.settimeout(10)
    received, answers = b"", []
    while len(answers) < count:
        head, separator, rest = received.partition(b"\r\n\r\n")
        if separator:
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(rest) >= length:
                answers.append(head + separator + rest[:length])
                received = rest[length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionClosedError(f"the connection closed after {received!r}")
        received += chunk
    return answers


def test_pipelined_requests_are_answered_whole_and_in_order(
    settings: Settings, protocol: type[asyncio.Protocol]
) -> None:
    """Two requests sent at once on one connection: two whole answers, in the order asked
    (the writes of a turn of the loop go out together, never out of order)."""
    request = b"GET /healthz HTTP/1.1\r\nHost: goshen.test\r\nX-Request-ID: %s\r\n\r\n"
    with guarded_api(settings, protocol) as address, socket.create_connection(address) as sock:
        sock.sendall(request % b"first" + request % b"second")
        answers = _responses(sock, 2)
        sock.sendall(request % b"third")
        answers += _responses(sock, 1)
    for answer, request_id in zip(answers, (b"first", b"second", b"third"), strict=True):
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nx-request-id: " + request_id + b"\r\n" in answer

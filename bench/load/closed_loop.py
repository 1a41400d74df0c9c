"""A closed-loop HTTP load generator, for when wrk is not installed: what `wrk -t1 -cN -dS
--latency` measures, from Python.

    python bench/load/closed_loop.py URL --connections 64 --duration 10 --body-file body.json
                                     [--header 'Authorization: Bearer gsk_...']

`--connections` keep-alive connections on one event loop (uvloop's when installed), each sending
the same POST again as soon as its answer is in, for `--duration` seconds; it prints one line of
JSON: requests/s, p50 and p99 in ms over every answer, non-2xx answers, and connection errors
(a connection the server closed is opened again). It runs in a process of its own, as wrk does,
and like wrk it takes a share of a core from the server it loads, more of one than wrk (Python
parses the answers): compare servers measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked")
_LAST_CHUNK = b"\r\n0\r\n\r\n"


class Tally:
    """Every answer's seconds and status, and the connections that failed, over one run."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.seconds: list[float] = []
        self.non_2xx = 0
        self.connection_errors = 0

    def answered(self, seconds: float, status: int) -> None:
        self.seconds.append(seconds)
        if not 200 <= status < 300:
            self.non_2xx += 1

    def summary(self, duration: float) -> dict[str, float | int]:
        ordered = sorted(self.seconds)

        def percentile(share: float) -> float:
            if not ordered:
                return 0.0
            return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

        return {
            "rps": len(ordered) / duration,
            "p50_ms": percentile(0.50),
            "p99_ms": percentile(0.99),
            "errors": self.non_2xx,
            "connection_errors": self.connection_errors,
        }


class Connection(asyncio.Protocol):
    """One keep-alive connection sending `request` again and again until the deadline."""

    def __init__(self, request: bytes, tally: Tally, closed: Callable[[], None]) -> None:
        self.request = request
        self.tally = tally
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.started = 0.0
        self.status = 0
        self.expected: int | None = None  # the answer's length, once its headers are in
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if time.perf_counter() >= self.tally.deadline:
            self.transport.close()
            return
        self.buffer.clear()
        self.expected, self.chunked = None, False
        self.started = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.expected is None and not self.chunked and not self._read_head():
            return
        if self.chunked:
            if not self.buffer.endswith(_LAST_CHUNK):
                return
        elif self.expected is None or len(self.buffer) < self.expected:
            return
        now = time.perf_counter()
        if now <= self.tally.deadline:  # as wrk: answers after the run's end are not counted
            self.tally.answered(now - self.started, self.status)
        self._send()

    def _read_head(self) -> bool:
        """Read the status and the body's length once the headers are in; whether they are."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[: end + 2]).lower()
        self.status = int(head[9:12])
        length = _CONTENT_LENGTH.search(head)
        if length is not None:
            self.expected = end + 4 + int(length.group(1))
        elif _CHUNKED.search(head) is not None:
            self.chunked = True
        else:
            self.expected = end + 4  # no body
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self.tally.deadline:
            self.tally.connection_errors += 1
        self.closed()


async def run(url: str, body: bytes, headers: list[str], connections: int, duration: float) -> dict:
    """Load `url` with `connections` connections for `duration` seconds; wrk's figures."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head + headers) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    tally = Tally(time.perf_counter() + duration)
    finished = asyncio.Event()
    open_connections = 0
    reconnecting: set[asyncio.Task[None]] = set()

    def closed() -> None:
        nonlocal open_connections
        open_connections -= 1
        if time.perf_counter() < tally.deadline:
            task = loop.create_task(connect())  # the server closed it early: open another
            reconnecting.add(task)
            task.add_done_callback(reconnecting.discard)
        elif open_connections == 0:
            finished.set()

    async def connect() -> None:
        nonlocal open_connections
        open_connections += 1
        try:
            await loop.create_connection(lambda: Connection(request, tally, closed), host, port)
        except OSError:
            tally.connection_errors += 1
            await asyncio.sleep(0.01)
            closed()

    for _ in range(connections):
        await connect()
    # A connection whose last answer never comes must not hold the run open (wrk's --timeout).
    try:
        await asyncio.wait_for(finished.wait(), timeout=duration + 10)
    except TimeoutError:
        tally.connection_errors += open_connections
    return tally.summary(duration)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args(argv)
    headers = ["Content-Type: application/json", *args.header]
    work = run(args.url, args.body_file.read_bytes(), headers, args.connections, args.duration)
    try:
        import uvloop
    except ImportError:
        figures = asyncio.run(work)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            figures = runner.run(work)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

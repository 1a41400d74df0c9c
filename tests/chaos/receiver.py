"""A webhook receiver on loopback that fails a share of the deliveries it gets, and keeps a record.

A failed delivery is one of two kinds, half each: refused before it is read (503: the receiver is
overloaded) or processed and then answered 500 (the receiver crashed before it could say so), which
the sender must retry and the receiver sees twice. Either way the sender retries with the same
`webhook-id`. No id is failed more than `max_failures_per_id` times in a row, so every event can
arrive within the platform's retry schedule whatever the dice say (8 attempts at 30 % would lose
about one event in 15,000 for good, and this suite sends thousands). The dice are seeded.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Receipt:
    """A delivery the receiver processed: its headers and the exact bytes it got."""

    webhook_id: str
    timestamp: str
    signature: str
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded

    @property
    def job_id(self) -> str:
        return str(self.payload["data"]["id"])

    @property
    def event_type(self) -> str:
        return str(self.payload["type"])


@dataclass
class FlakyReceiver:
    """What the receiver was sent (`attempts`), processed (`receipts`) and answered."""

    failure_rate: float
    seed: int
    max_failures_per_id: int = 2
    attempts: int = 0
    receipts: list[Receipt] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)
    url: str = ""
    _failures: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._dice = random.Random(self.seed)

    def take(self, headers: dict[str, str], body: bytes) -> int:
        """Decide a delivery's fate and record it; the status code to answer."""
        webhook_id = headers.get("webhook-id", "")
        with self._lock:
            self.attempts += 1
            fails = (
                self._dice.random() < self.failure_rate
                and self._failures[webhook_id] < self.max_failures_per_id
            )
            processed = not fails or self._dice.random() < 0.5
            if fails:
                self._failures[webhook_id] += 1
            if processed:
                receipt = Receipt(
                    webhook_id,
                    headers.get("webhook-timestamp", ""),
                    headers.get("webhook-signature", ""),
                    body,
                )
                self.receipts.append(receipt)
            status = (500 if processed else 503) if fails else 204
            self.answers[status] += 1
            return status

    def snapshot(self) -> list[Receipt]:
        with self._lock:
            return list(self.receipts)


def _handler(receiver: FlakyReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            status = receiver.take(headers, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # thousands of deliveries; the record is the receiver's

    return Handler


@contextmanager
def flaky_receiver(failure_rate: float, seed: int) -> Iterator[FlakyReceiver]:
    """A FlakyReceiver serving on a free loopback port for the block (`url` set)."""
    receiver = FlakyReceiver(failure_rate, seed)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, name="chaos-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

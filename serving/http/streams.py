"""The API process's open event streams, and the news that ends them early.

Streams (`/v1/jobs/{id}/events`, `/v1/training/{id}/logs`) can stay open for hours, so a server
that waits for them to finish never stops. When the server begins to stop (serving.server, on
SIGTERM), `StreamHub.begin_shutdown()` wakes every open stream; each sends one `shutdown` event
and closes, and the client reconnects with `Last-Event-ID` to another API process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SHUTDOWN_EVENT = "shutdown"
SHUTDOWN_DETAIL = "the API process is shutting down: reconnect with Last-Event-ID to resume"


class StreamHub:
    """The open streams of one app. Every method runs on the app's event loop thread."""

    def __init__(self) -> None:
        self._closing = False
        self._wakers: set[Callable[[], None]] = set()

    @property
    def closing(self) -> bool:
        """Whether the server is stopping: a stream that sees this says goodbye and ends."""
        return self._closing

    @property
    def open_streams(self) -> int:
        return len(self._wakers)

    def begin_shutdown(self) -> None:
        """Tell every open stream to end now (and every stream opened later to end at once)."""
        self._closing = True
        for wake in list(self._wakers):
            wake()

    @contextmanager
    def open(self, wake: Callable[[], None]) -> Iterator[None]:
        """Register a stream for the block; `wake()` must make it look at `closing` soon."""
        self._wakers.add(wake)
        try:
            yield
        finally:
            self._wakers.discard(wake)


def shutdown_event() -> str:
    """The server-sent event a stream ends with when the server stops (it carries no id: the
    client resumes after the last event it received)."""
    data = json.dumps({"reason": "shutdown", "detail": SHUTDOWN_DETAIL})
    return f"event: {SHUTDOWN_EVENT}\ndata: {data}\n\n"

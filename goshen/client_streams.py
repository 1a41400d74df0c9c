"""Following server-sent events for `Goshen` and `AsyncGoshen` (`stream`, a job's events;
`training_logs`, a training job's log): each event typed as it is read, and a stream that was
cut opened again from the last event seen (`Last-Event-ID`), so that no event is lost and none
comes twice. Imports only httpx, pydantic and the standard library.

Two events end a stream from the server's side and never reach the caller: `shutdown` (that API
process is stopping: the stream is opened again, on whichever process answers, after the last
event seen, as after a cut) and `unauthorized` (the key was revoked or its user disabled while
the stream was open: `Unauthorized` is raised).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from contextlib import closing
from typing import Any, Protocol, TypeVar

import httpx

from goshen.client_errors import Unauthorized
from goshen.client_http import JobEvent
from goshen.client_retries import RetryPolicy
from goshen.client_types import ENDED, DoneEvent, Event, event_of


class _Numbered(Protocol):
    @property
    def id(self) -> int: ...


E = TypeVar("E", bound=_Numbered)
# Keep-alives come every 15 s: a stream silent for longer than this is taken as lost.
STREAM_READ_TIMEOUT_SECONDS = 60.0
SHUTDOWN_EVENT = "shutdown"
UNAUTHORIZED_EVENT = "unauthorized"


# Streams a server may end with `shutdown` in a row, with no event between, before the client
# gives up (with the backoff, a few minutes: longer than any rolling restart).
MAX_SERVER_ENDS = 20


class ServerEndedStream(httpx.RemoteProtocolError):
    """The server ended the stream with `shutdown`: a cut like any other (the stream is opened
    again after the last event seen, without asking whether the object ended meanwhile), but
    one that never counts against the retries: a rolling restart may end it several times."""


def server_ended(kind: str, data: dict[str, Any]) -> bool:
    """Whether an event of `kind` is the server ending the stream for it to be opened again
    (`shutdown`); raises Unauthorized for `unauthorized`, whose stream will not open again."""
    if kind == UNAUTHORIZED_EVENT:
        detail = data.get("detail") or "the API key no longer works"
        raise Unauthorized(401, {"title": "Unauthorized", "status": 401, "detail": detail})
    return kind == SHUTDOWN_EVENT


class EventParser:
    """Server-sent events, a line at a time (the lines without their line ends). Their data is
    JSON, but for `text_kinds`, whose data is a line of text, read as `{"message": line}`."""

    def __init__(self, text_kinds: Collection[str] = ()) -> None:
        self._text_kinds = text_kinds
        self._id = 0
        self._kind = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """The event that `line` completes, if it completes one."""
        if line.startswith("id:"):
            self._id = int(line[3:].strip())
        elif line.startswith("event:"):
            self._kind = line[6:].strip()
        elif line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
        elif not line and self._data:
            text = "\n".join(self._data)
            kind, self._kind, self._data = self._kind, "message", []
            data = {"message": text} if kind in self._text_kinds else json.loads(text)
            if server_ended(kind, data):
                raise ServerEndedStream(str(data.get("detail") or "the API process is stopping"))
            return event_of(self._id, kind, data)
        return None


class Resumption:
    """Where a stream is, and how long to wait before opening it again once cut. `path`: the
    stream's; `object_path`: what says whether it has ended (a job, a training job);
    `text_kinds`: its events whose data is text."""

    def __init__(
        self,
        path: str,
        object_path: str,
        last_event_id: int | None,
        policy: RetryPolicy,
        text_kinds: Collection[str] = (),
    ) -> None:
        self.path = path
        self.object_path = object_path
        self.text_kinds = text_kinds
        self.last_event_id = last_event_id
        self._policy = policy
        self._cuts = 0  # cuts in a row with no event between them

    def headers(self) -> dict[str, str]:
        if self.last_event_id is None:
            return {}
        return {"Last-Event-ID": str(self.last_event_id)}

    def seen(self, event: E) -> E:
        """`event` was read: the stream resumes after it, and the cuts start over."""
        self.last_event_id = event.id
        self._cuts = 0
        return event

    def cut(self, error: Exception | None) -> float:
        """Seconds to wait before opening the stream again, after it ended without `done`
        (`error`: how it broke; None: it was closed). Raises `error` once the stream has
        broken more than `max_retries` times in a row with no event between."""
        self._cuts += 1
        # A shutdown is no failure (a rolling restart ends streams several times), but a server
        # that does nothing else, MAX_SERVER_ENDS times in a row, is not coming back.
        ended = isinstance(error, ServerEndedStream)
        limit = MAX_SERVER_ENDS if ended else self._policy.max_retries
        if error is not None and self._cuts > limit:
            raise error
        return self._policy.backoff(min(self._cuts - 1, 6))

    def ended(self, found: dict[str, Any]) -> DoneEvent | None:
        """After a stream closed without `done` (its events were older than the API keeps), the
        object at `object_path` as read: a `done` when it has ended."""
        if found.get("status") not in ENDED:
            return None
        return DoneEvent(
            id=self.last_event_id or 0, status=found["status"], error=found.get("error")
        )


def job_events(job_id: str, last_event_id: int | None, policy: RetryPolicy) -> Resumption:
    return Resumption(f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}", last_event_id, policy)


def training_log(job_id: str, last_event_id: int | None, policy: RetryPolicy) -> Resumption:
    path = f"/v1/training-jobs/{job_id}"
    return Resumption(f"{path}/logs", path, last_event_id, policy, text_kinds=("log",))


def reopening(
    opened: Callable[[int | None], Iterator[JobEvent]],
    last_event_id: int | None,
    policy: RetryPolicy,
) -> Iterator[JobEvent]:
    """The events of the stream `opened(last_event_id)`, opened again after the last event seen
    when the server ends it with `shutdown` (after a short pause: the next process may still be
    starting); `unauthorized` raises Unauthorized. Other ends are the caller's to judge."""
    reopened = 0  # times in a row the server ended the stream with no event between
    while True:
        with closing(opened(last_event_id)) as events:  # type: ignore[type-var]
            for event in events:
                if server_ended(event.kind, event.data):
                    break
                last_event_id, reopened = event.id, 0
                yield event
            else:
                return
        reopened += 1
        if reopened > MAX_SERVER_ENDS:
            raise ServerEndedStream(f"the server ended the stream {reopened} times in a row")
        policy.sleep(policy.backoff(min(reopened - 1, 6)))

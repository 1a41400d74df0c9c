"""Following a job's server-sent events for `Goshen.stream` and `AsyncGoshen.stream`: each event
typed as it is read, and a stream that was cut opened again from the last event seen
(`Last-Event-ID`), so that no event is lost and none comes twice. Imports only httpx, pydantic
and the standard library.
"""

from __future__ import annotations

import json

from goshen.client_retries import RetryPolicy
from goshen.client_types import DoneEvent, Event, Job, event_of

# Keep-alives come every 15 s: a stream silent for longer than this is taken as lost.
STREAM_READ_TIMEOUT_SECONDS = 60.0


class EventParser:
    """Server-sent events, a line at a time (the lines without their line ends)."""

    def __init__(self) -> None:
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
            event = event_of(self._id, self._kind, json.loads("\n".join(self._data)))
            self._kind, self._data = "message", []
            return event
        return None


class Resumption:
    """Where a job's stream is, and how long to wait before opening it again once cut."""

    def __init__(self, job_id: str, last_event_id: int | None, policy: RetryPolicy) -> None:
        self.job_id = job_id
        self.path = f"/v1/jobs/{job_id}/events"
        self.last_event_id = last_event_id
        self._policy = policy
        self._cuts = 0  # cuts in a row with no event between them

    def headers(self) -> dict[str, str]:
        if self.last_event_id is None:
            return {}
        return {"Last-Event-ID": str(self.last_event_id)}

    def seen(self, event: Event) -> Event:
        self.last_event_id = event.id
        self._cuts = 0
        return event

    def cut(self, error: Exception | None) -> float:
        """Seconds to wait before opening the stream again, after it ended without `done`
        (`error`: how it broke; None: it was closed). Raises `error` once the stream has
        broken more than `max_retries` times in a row with no event between."""
        self._cuts += 1
        if error is not None and self._cuts > self._policy.max_retries:
            raise error
        return self._policy.backoff(min(self._cuts - 1, 6))

    def ended(self, job: Job) -> DoneEvent | None:
        """After a stream closed without `done` (its events were older than the API keeps):
        a `done` for a job that has ended."""
        if not job.ended:
            return None
        return DoneEvent(id=self.last_event_id or 0, status=job.status, error=job.error)

"""What every call of the SDK (goshen.client) shares: the API's problems as GoshenAPIError,
JSON object bodies, and server-sent event streams. Imports only httpx and the standard library."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import httpx


class GoshenAPIError(Exception):
    """The API answered with a problem (RFC 9457); `problem` holds its fields."""

    def __init__(self, status_code: int, problem: dict[str, Any]) -> None:
        self.status_code = status_code
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or "request failed"
        super().__init__(f"{status_code}: {detail}")


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event of a job: `kind` is status, progress, log, output or done."""

    id: int
    kind: str
    data: dict[str, Any]


def _server_sent_events(
    lines: Iterator[str], *, text_kinds: Collection[str] = ()
) -> Iterator[JobEvent]:
    """The events of a stream, until `done`. Their data is JSON, but for `text_kinds`, whose
    data is a line of text, given as `{"message": line}`."""
    event_id, kind = 0, "message"
    data: list[str] = []
    for line in lines:
        if line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))  # a log line keeps its indentation
        elif not line and data:
            text = "\n".join(data)
            yield JobEvent(
                event_id, kind, {"message": text} if kind in text_kinds else json.loads(text)
            )
            if kind == "done":
                return
            kind, data = "message", []


def _until(lines: Iterator[str], deadline: float | None, what: str) -> Iterator[str]:
    """`lines` until `deadline` (keep-alive comments come every 15 s, so it is checked)."""
    for line in lines:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not end in the time given")
        yield line


def _without_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _json_object(body: Any, call: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise TypeError(f"{call} answered {body!r:.200}, not a JSON object; is this a Goshen API?")
    return body


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"status": response.status_code, "detail": response.text[:500]}
    return body if isinstance(body, dict) else {"status": response.status_code, "detail": body}

"""Logging for every long-running command (`goshen api`, `worker`, `webhooks`, `up`, `demo`):
lines for people (GOSHEN_LOG_FORMAT=text) or one JSON object a line for collectors (`json`).

Each line carries what it is about: the request (`request_id`, which follows a job from the API
through the worker to the webhook dispatcher), the job (`job_id`), the worker (`worker_id`),
taken from a context the code binds where it starts on one of them (`log_context`), so the code
that logs never passes them along. The context is a ContextVar: each asyncio task and each
request has its own, and threads start without one.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from goshen.config import LogFormat

# Never changed in place: binding sets a new mapping, so a task's copy of the context never
# sees what another task binds.
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar(
    "goshen_log_context", default=MappingProxyType({})
)
# Fields a call may also pass as `extra=`, which lines then carry like the context's.
CONTEXT_FIELDS = ("request_id", "job_id", "job_ids", "request_ids", "worker_id", "event_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def current_request_id() -> str | None:
    """The id of the request (or of the job's submitting request) being handled, if any."""
    request_id = _CONTEXT.get().get("request_id")
    return request_id if isinstance(request_id, str) else None


def context_fields() -> dict[str, Any]:
    """What lines logged here (in this thread or task) carry."""
    return dict(_CONTEXT.get())


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add `fields` (None ones are left out) to the context until `unbind(token)`."""
    merged = {**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _CONTEXT.set(merged)


def bind_request(request_id: str) -> Token[Mapping[str, Any]]:
    """A request's context, in place of any other until `unbind(token)`: bind(request_id=...)
    without the merge, for the hottest path (every request)."""
    return _CONTEXT.set({"request_id": request_id})


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _CONTEXT.reset(token)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Lines logged in the block (in this thread or task) carry `fields` (None ones left out)."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def jobs_context(jobs: Sequence[tuple[str, str | None]]) -> dict[str, Any]:
    """The fields of a batch of (job id, request id): one job's as `job_id` and `request_id`,
    several as `job_ids` and `request_ids` lists."""
    if len(jobs) == 1:
        return {"job_id": jobs[0][0], "request_id": jobs[0][1]}
    return {
        "job_ids": [job_id for job_id, _ in jobs],
        "request_ids": [request_id for _, request_id in jobs if request_id is not None] or None,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC, ISO 8601), level, logger, message, the context's fields
    and `exception` (the traceback) when there is one. uvicorn's access lines also get client,
    method, path and status."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_CONTEXT.get())
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            entry.update(_access_fields(record.args))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _access_fields(args: tuple[Any, ...]) -> dict[str, Any]:
    """uvicorn's access line's arguments: client, method, path (with its query), HTTP version,
    status."""
    if len(args) != 5:
        return {}
    client, method, path, _version, status = args
    return {"client": client, "method": method, "path": path, "status": status}


class TextFormatter(logging.Formatter):
    """The classic line, then the context's fields as `name=value` when there are any."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = context_fields()
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                fields[name] = value
        if not fields:
            return line
        tags = " ".join(f"{name}={_text(value)}" for name, value in fields.items())
        head, newline, rest = line.partition("\n")  # before a traceback, on the message's line
        return f"{head} [{tags}]{newline}{rest}"


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


class _Handler(logging.StreamHandler[TextIO]):
    """configure_logging's handler, which calling it again replaces. It writes to `to`, or else
    to whatever sys.stderr is when a line is logged (as logging's last resort does), so a
    command run under a runner that swaps it never writes to a stream since closed."""

    def __init__(self, to: TextIO | None) -> None:
        self._to = to
        super().__init__(to)

    @property
    def stream(self) -> TextIO:
        return self._to or sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # fixed at creation


def configure_logging(
    level: str, log_format: LogFormat, stream: TextIO | None = None, *, force: bool = False
) -> None:
    """Log at `level` in `log_format` to `stream` (default: standard error, as it is when a line
    is written). As logging.basicConfig, a root logger that already has handlers of someone
    else's (a host process, pytest) is left alone unless `force`; ours is replaced."""
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if isinstance(handler, _Handler)]
    if not force and len(ours) != len(root.handlers):
        return
    for handler in list(root.handlers) if force else ours:
        root.removeHandler(handler)
    handler = _Handler(stream)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python's warnings as lines of ours, not bare text
    # uvicorn's own handlers (when something configured them) would print its lines twice, and
    # never as JSON: its loggers go through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True

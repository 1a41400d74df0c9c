"""goshen.logs: the JSON and text formats, the context that tags lines (per thread and per
asyncio task), and configure_logging in a process of its own."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import threading
from typing import Any

import pytest

from goshen.config import LogFormat
from goshen.logs import (
    JsonFormatter,
    TextFormatter,
    current_request_id,
    jobs_context,
    log_context,
)


def _record(message: str = "hello %s", *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("goshen.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def _json(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line, "one object a line"
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_a_json_line_has_the_time_level_logger_and_message() -> None:
    entry = _json(_record("hello %s", "world"))
    assert entry.pop("ts").endswith("+00:00")
    assert entry == {"level": "WARNING", "logger": "goshen.test", "message": "hello world"}


def test_a_json_line_carries_the_context_and_extra_fields() -> None:
    with log_context(request_id="req-1", job_id="job_1", worker_id=None):
        entry = _json(_record(worker_id="w-1"))
        assert current_request_id() == "req-1"
    assert entry["request_id"] == "req-1" and entry["job_id"] == "job_1"
    assert entry["worker_id"] == "w-1"  # passed as extra=
    assert current_request_id() is None and "request_id" not in _json(_record())


def test_an_exception_is_a_field_of_its_line() -> None:
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        record = logging.LogRecord(
            "goshen.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    entry = _json(record)
    assert entry["message"] == "failed"
    assert entry["exception"].startswith("Traceback") and "ValueError: broken" in entry["exception"]


def test_uvicorns_access_line_gets_its_fields() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5555", "POST", "/v1/generate?x=1", "1.1", 201),
        None,
    )
    with log_context(request_id="req-9"):
        entry = _json(record)
    assert entry["message"] == '127.0.0.1:5555 - "POST /v1/generate?x=1 HTTP/1.1" 201'
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/v1/generate?x=1", 201)
    assert entry["request_id"] == "req-9"


def test_values_that_json_cannot_hold_are_written_as_text() -> None:
    entry = _json(_record(event_id=object(), job_id=("job_a", "job_b")))
    assert entry["event_id"].startswith("<object object")
    assert entry["job_id"] == ["job_a", "job_b"]


def test_a_text_line_ends_with_the_context_before_any_traceback() -> None:
    formatter = TextFormatter()
    assert formatter.format(_record("plain")).endswith("WARNING goshen.test: plain")
    with log_context(**jobs_context([("job_a", "req-a"), ("job_b", None)])):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            record = _record("batch failed")
            record.exc_info = sys.exc_info()
        first, *rest = formatter.format(record).splitlines()
    assert first.endswith("goshen.test: batch failed [job_ids=job_a,job_b request_ids=req-a]")
    assert rest[0].startswith("Traceback") and rest[-1] == "RuntimeError: boom"


def test_one_job_is_job_id_and_request_id_several_are_lists() -> None:
    assert jobs_context([("job_a", "req-a")]) == {"job_id": "job_a", "request_id": "req-a"}
    assert jobs_context([("job_a", None), ("job_b", None)]) == {
        "job_ids": ["job_a", "job_b"],
        "request_ids": None,
    }


def test_each_thread_and_each_task_has_its_own_context() -> None:
    seen: dict[str, str | None] = {}

    def in_thread() -> None:
        seen["thread at start"] = current_request_id()  # threads start without a context
        with log_context(request_id="thread"):
            seen["thread"] = current_request_id()

    async def task(name: str) -> None:
        with log_context(request_id=name):
            await asyncio.sleep(0.01)  # the other task binds its own meanwhile
            seen[name] = current_request_id()

    async def both() -> None:
        await asyncio.gather(task("task-1"), task("task-2"))

    with log_context(request_id="main"):
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        asyncio.run(both())
        seen["main"] = current_request_id()
    assert seen == {
        "thread at start": None,
        "thread": "thread",
        "task-1": "task-1",
        "task-2": "task-2",
        "main": "main",
    }


_CONFIGURE = """
import logging, sys
from goshen.config import LogFormat
from goshen.logs import configure_logging, log_context
configure_logging("INFO", LogFormat(sys.argv[1]))
configure_logging("INFO", LogFormat(sys.argv[1]))  # again: replaced, not doubled
logging.getLogger("goshen.x").debug("not at INFO")
with log_context(request_id="req-7"):
    logging.getLogger("uvicorn.error").info("through ours")
logging.getLogger("goshen.x").info("done")
"""


@pytest.mark.parametrize("log_format", list(LogFormat))
def test_configure_logging_writes_every_line_once_to_standard_error(
    log_format: LogFormat,
) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", _CONFIGURE, log_format.value],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = ran.stderr.splitlines()
    assert ran.stdout == "" and len(lines) == 2, ran.stderr
    if log_format is LogFormat.json:
        first, second = (json.loads(line) for line in lines)
        assert (first["logger"], first["message"], first["request_id"]) == (
            "uvicorn.error",
            "through ours",
            "req-7",
        )
        assert second["message"] == "done" and "request_id" not in second
    else:
        assert lines[0].endswith("INFO uvicorn.error: through ours [request_id=req-7]")
        assert lines[1].endswith("INFO goshen.x: done")


def test_configure_logging_leaves_a_host_processs_handlers_alone() -> None:
    from goshen.logs import configure_logging

    root = logging.getLogger()
    before = list(root.handlers)
    assert before, "pytest's handlers"
    level = root.level
    configure_logging("DEBUG", LogFormat.json)
    assert root.handlers == before and root.level == level
    captured = io.StringIO()
    try:
        configure_logging("DEBUG", LogFormat.json, captured, force=True)
        logging.getLogger("goshen.test").debug("forced")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before:
            root.addHandler(handler)
        root.setLevel(level)
    assert json.loads(captured.getvalue())["message"] == "forced"

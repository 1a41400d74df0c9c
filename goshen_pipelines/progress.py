"""A compact progress display for runs started from the command line (`goshen train digits`)."""

import logging
import sys
import time
from typing import Any

import dagster as dg

_SHOWN_EVENTS = {
    "STEP_START": "started",
    "STEP_SUCCESS": "done",
    "STEP_FAILURE": "FAILED",
    "STEP_SKIPPED": "skipped",
}


class ProgressFormatter(logging.Formatter):
    """`[elapsed] step  message`: step transitions, check results and the assets' own lines."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", {}) or {}
        step = meta.get("step_key") or "run"
        return f"[{time.monotonic() - self.started:7.1f}s] {step:<30} {self.describe(record, meta)}"

    @staticmethod
    def describe(record: logging.LogRecord, meta: dict[str, Any]) -> str:
        event = meta.get("dagster_event")
        if event is None:
            return meta.get("orig_message") or record.getMessage()
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            return f"check {evaluation.check_name} {'passed' if evaluation.passed else 'FAILED'}"
        if event.event_type_value == "STEP_FAILURE":
            return f"FAILED: {event.event_specific_data.error.message.strip()}"
        return _SHOWN_EVENTS.get(event.event_type_value, event.message or "")


class ProgressFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, "dagster_meta", {}) or {}
        event = meta.get("dagster_event")
        if event is None:
            return record.levelno >= logging.INFO
        return event.event_type_value in {*_SHOWN_EVENTS, "ASSET_CHECK_EVALUATION"}


@dg.logger(
    config_schema=None,
    description="One line per step transition, check result and training epoch.",
)
def progress_logger(_init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.getLogger("goshen.progress")
    logger.setLevel(logging.DEBUG)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ProgressFormatter())
    handler.addFilter(ProgressFilter())
    logger.handlers = [handler]
    logger.propagate = False
    return logger

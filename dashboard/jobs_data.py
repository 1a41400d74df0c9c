"""The Jobs page's data: its filters as the admin API's query, and jobs and their events as the
rows of the page's tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from dashboard import ui

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
LIVE_STATUSES = frozenset({"queued", "running"})
PAGE_SIZE = 50
# The API's time filters exclude the moment they name; a day's jobs start at its first moment.
_MOMENT_BEFORE_A_DAY = timedelta(milliseconds=1)


@dataclass(frozen=True)
class JobFilters:
    """What the admin narrowed the list to; empty text and None mean "any"."""

    status: str | None = None
    model: str = ""
    user_id: str = ""
    created_from: date | None = None
    created_through: date | None = None


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def list_params(filters: JobFilters, cursor: str | None = None) -> dict[str, Any]:
    """admin_list_jobs's keyword arguments for one page: dates are whole UTC days, both included."""
    params: dict[str, Any] = {"limit": PAGE_SIZE, "cursor": cursor}
    if filters.status:
        params["status"] = filters.status
    if filters.model.strip():
        params["model"] = filters.model.strip()
    if filters.user_id.strip():
        params["user_id"] = filters.user_id.strip()
    if filters.created_from is not None:
        params["created_after"] = _day_start(filters.created_from) - _MOMENT_BEFORE_A_DAY
    if filters.created_through is not None:
        params["created_before"] = _day_start(filters.created_through + timedelta(days=1))
    return params


def progress_text(progress: dict[str, Any] | None) -> str:
    """`3/4 (75%)`, or `—` before the first step."""
    if not progress:
        return "—"
    return f"{progress['step']}/{progress['total']} ({progress['percentage']:g}%)"


def job_rows(jobs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per job of the list, in the API's order (newest first)."""
    return [
        {
            "id": job["id"],
            "created": ui.timestamp(job["created_at"]),
            "user": job["user_id"],
            "model": job["model"],
            "status": job["status"],
            "progress": progress_text(job["progress"]),
            "cost": ui.credits(job["cost_micros"]),
            "queued for": ui.duration(job["metrics"]["queue_seconds"]),
            "ran for": ui.duration(job["metrics"]["run_seconds"]),
        }
        for job in jobs
    ]


def event_message(kind: str, data: dict[str, Any]) -> str:
    """What an event says, in a line: a status and why, a step, a log line, the images made."""
    if kind in ("status", "done"):
        details = [f"{key} {value}" for key, value in data.items() if key != "status"]
        return ", ".join([str(data.get("status", "")), *details])
    if kind == "progress":
        return f"step {progress_text(data)}"
    if kind == "log":
        return str(data.get("message", ""))
    if kind == "output":
        images = len(data.get("images") or [])
        return f"{images} image{'' if images == 1 else 's'}"
    return ", ".join(f"{key} {value}" for key, value in data.items())


def timeline(events: list[dict[str, Any]]) -> list[dict[str, str]]:
    """A job's events, oldest first, as rows of time, kind and message."""
    return [
        {
            "time": ui.timestamp(event["created_at"]),
            "kind": event["type"],
            "message": event_message(event["type"], event["data"]),
        }
        for event in events
    ]

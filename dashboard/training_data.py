"""What the training page shows, shaped from the API's answers: datasets and training jobs as
table rows, one job's facts and the links to its runs."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

from dashboard.ui import credits, duration, human_bytes, timestamp

Row = dict[str, Any]
DATASET_STATUSES = ("any", "uploaded", "validating", "ready", "failed")
TRAINING_STATUSES = ("any", "queued", "running", "succeeded", "failed", "canceled")
# A job in these may still log lines: its panel refreshes itself.
LIVE = frozenset({"queued", "running"})
# The links a job's `links` holds to the Dagster and MLflow UIs, and their buttons' labels.
RUN_LINKS = (
    ("dagster_run", "Dagster run"),
    ("mlflow_run", "MLflow run"),
    ("mlflow_model_version", "MLflow model version"),
)


def first(items: Iterable[Row], count: int) -> list[Row]:
    """The first `count` items of a paginated listing (fetching only the pages they need)."""
    return list(islice(items, count))


def status_filter(chosen: str) -> str | None:
    return None if chosen == "any" else chosen


def dataset_rows(datasets: list[Row]) -> list[Row]:
    return [
        {
            "id": dataset["id"],
            "user id": dataset["user_id"],
            "name": dataset["name"],
            "kind": dataset["kind"],
            "status": dataset["status"],
            "size": human_bytes(dataset["size_bytes"]),
            "rows / files": _items(dataset),
            "progress": _progress(dataset.get("progress")),
            "created": timestamp(dataset["created_at"]),
            "error": dataset.get("error") or "",
        }
        for dataset in datasets
    ]


def _items(dataset: Row) -> str:
    """How many rows a table holds, or files an image archive, as far as ingestion knows."""
    progress = dataset.get("progress") or {}
    if progress.get("total"):
        return f"{progress['total']:,} {progress['unit']}"
    if dataset["kind"] == "images":
        return f"{dataset['file_count']:,} files"
    rows = (dataset.get("stats") or {}).get("rows")
    return f"{rows:,} rows" if isinstance(rows, int) else "—"


def _progress(progress: Row | None) -> str:
    if not progress:
        return "—"
    return f"{progress['percent']}% {progress['stage']}"


def job_rows(jobs: list[Row]) -> list[Row]:
    return [
        {
            "id": job["id"],
            "user id": job["user_id"],
            "model": job["model_name"],
            "task": job["task"],
            "status": job["status"],
            "cost (credits)": credits(job.get("cost_micros")),
            "run time": duration(job.get("run_seconds")),
            "created": timestamp(job["created_at"]),
        }
        for job in jobs
    ]


def job_label(job: Row) -> str:
    return f"{job['model_name']} · {job['status']} · {job['id']}"


def job_facts(job: Row) -> list[tuple[str, str]]:
    """What a job's panel states about it, as (label, value)."""
    registered = job.get("registered_model")
    version = job.get("registered_version")
    return [
        ("Status", job["status"]),
        ("Owner", job["user_id"]),
        ("Dataset", job.get("dataset_id") or "—"),
        ("Task", job["task"]),
        ("Deploy", job["deploy"]),
        ("Estimated cost", credits(job.get("estimated_cost_micros"))),
        ("Cost", credits(job.get("cost_micros"))),
        ("Run time", duration(job.get("run_seconds"))),
        ("Registered", f"{registered} v{version}" if registered and version else "—"),
        ("Created", timestamp(job["created_at"])),
        ("Started", timestamp(job.get("started_at"))),
        ("Ended", timestamp(job.get("completed_at"))),
    ]


def run_links(job: Row) -> list[tuple[str, str]]:
    """(label, URL) of the job's runs in the Dagster and MLflow UIs that exist yet."""
    links = job.get("links") or {}
    return [(label, links[key]) for key, label in RUN_LINKS if links.get(key)]

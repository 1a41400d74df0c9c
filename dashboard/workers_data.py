"""The API's worker list (GET /v1/admin/workers) shaped for the Workers page: one row a worker,
stale ones marked."""

from __future__ import annotations

from typing import Any

import pandas as pd
from pandas.io.formats.style import Styler

from dashboard.ui import duration

STALE = "⚠️ stale"
STALE_ROW_STYLE = "background-color: rgba(255, 75, 75, 0.15)"
COLUMNS = [
    "Stale",
    "Host",
    "PID",
    "Device",
    "Memory",
    "Loaded models",
    "Running jobs",
    "Heartbeat",
    "Status",
    "Worker",
]


def workers_frame(workers: list[dict[str, Any]]) -> pd.DataFrame:
    """A row a worker, in the API's order (most recent heartbeat first)."""
    return pd.DataFrame([_row(worker) for worker in workers], columns=COLUMNS)


def stale_count(workers: list[dict[str, Any]]) -> int:
    return sum(1 for worker in workers if worker["stale"])


def highlight_stale(frame: pd.DataFrame) -> Styler:
    """The frame with its stale workers' rows tinted red."""
    return frame.style.apply(
        lambda row: [STALE_ROW_STYLE if row["Stale"] else ""] * len(row), axis=1
    )


def device(worker: dict[str, Any]) -> str:
    """`cuda:1 · NVIDIA H100`: where it computes and on what; the name alone from workers that
    started before devices were reported."""
    where = worker.get("device")
    return f"{where} · {worker['device_name']}" if where else worker["device_name"]


def memory_use(worker: dict[str, Any]) -> str:
    """`12 GiB of 80 GiB`: what it holds now of the device's total, as far as it reported."""
    used, total = worker.get("memory_used_bytes"), worker["device_memory_bytes"]
    if used is None:
        return memory(total)
    return f"{memory(used)} of {memory(total)}" if total is not None else f"{memory(used)} used"


def memory(size_bytes: int | None) -> str:
    """Device memory as `80 GiB`, `512 MiB`; `—` when the worker did not report it."""
    if size_bytes is None:
        return "—"
    if size_bytes >= 2**30:
        return f"{size_bytes / 2**30:,.0f} GiB"
    return f"{size_bytes / 2**20:,.0f} MiB"


def _row(worker: dict[str, Any]) -> dict[str, Any]:
    loaded = ", ".join(f"{m['model']} v{m['version']}" for m in worker["loaded_models"])
    running = ", ".join(f"{job['id']} ({job['model']})" for job in worker["running_jobs"])
    status = worker["status"]
    if worker.get("status_detail"):
        status = f"{status}: {worker['status_detail']}"
    return {
        "Stale": STALE if worker["stale"] else "",
        "Host": worker["host"],
        "PID": worker["pid"],
        "Device": device(worker),
        "Memory": memory_use(worker),
        "Loaded models": loaded or "—",
        "Running jobs": running or "—",
        "Heartbeat": f"{duration(worker['heartbeat_age_seconds'])} ago",
        "Status": status,
        "Worker": worker["id"],
    }

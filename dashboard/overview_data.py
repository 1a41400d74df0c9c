"""The API's live stats (GET /v1/admin/stats) shaped for the Overview page: its queue table and
its chart frames."""

from __future__ import annotations

from typing import Any

import pandas as pd

from dashboard.ui import MICROS

WINDOWS = ("5m", "15m", "1h", "6h", "24h", "7d")
DEFAULT_WINDOW = "1h"
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
SLICE_START = "Slice start"


def jobs_by_status(stats: dict[str, Any]) -> list[tuple[str, int]]:
    """(status, jobs created in the window that are in it now), in a job's life order."""
    counts = stats["jobs_by_status"]
    return [(status, int(counts.get(status, 0))) for status in JOB_STATUSES]


def queue_by_model(stats: dict[str, Any]) -> pd.DataFrame:
    """Jobs queued now per model, the deepest queue first."""
    rows = sorted(stats["queued_by_model"].items(), key=lambda item: (-item[1], item[0]))
    return pd.DataFrame(rows, columns=["Model", "Queued"])


def series_frame(stats: dict[str, Any]) -> pd.DataFrame:
    """The window's slices, indexed by when each starts: jobs submitted, images, predictions and
    what they cost in credits."""
    series = stats["series"]
    return pd.DataFrame(
        {
            "Jobs": [bucket["jobs"] for bucket in series],
            "Images": [bucket["images"] for bucket in series],
            "Predictions": [bucket["predictions"] for bucket in series],
            "Credits": [bucket["cost_micros"] / MICROS for bucket in series],
        },
        index=pd.DatetimeIndex(
            pd.to_datetime([bucket["start"] for bucket in series], utc=True), name=SLICE_START
        ),
    )


def per_minute(rate: float) -> str:
    """A rate as the metric shows it: `0.1`, `12.5`, `1,250`."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:,.2f}".rstrip("0").rstrip(".")

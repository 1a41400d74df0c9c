"""The SDK's calls admins run the platform by: workers, live stats, and every user's datasets and
training jobs.

GoshenClient (goshen.client) inherits them; imports only httpx and the standard library.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from goshen.client_http import _without_none


class _Calls(Protocol):
    """What these calls need of the client that inherits them."""

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...

    def paginate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]: ...


class AdminOperationsCalls:
    """Admin reads for running the platform (an admin key)."""

    def admin_workers(self: _Calls, *, include_gone: bool = False) -> dict[str, Any]:
        """Every worker (`data`), most recent heartbeat first: device, loaded models, status,
        heartbeat age, `stale`, and the jobs it runs now; `include_gone` adds workers silent
        for over a day."""
        params = {"include_gone": "true"} if include_gone else {}
        return self._object("GET", "/v1/admin/workers", params=params)

    def admin_stats(self: _Calls, window: str = "1h") -> dict[str, Any]:
        """The platform over the last `window` (5m, 15m, 1h, 6h, 24h or 7d): jobs by status,
        queue depth by model, queue and run time p50/p95, images and predictions per minute,
        spend, workers alive, models deployed."""
        return self._object("GET", "/v1/admin/stats", params={"window": window})

    def admin_list_datasets(
        self: _Calls, *, user_id: str | None = None, status: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every user's datasets, newest first, each with its `user_id`."""
        return self.paginate("/v1/admin/datasets", **_without_none(user_id=user_id, status=status))

    def admin_list_training_jobs(
        self: _Calls, *, user_id: str | None = None, status: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every user's training jobs, newest first, each with its `user_id`."""
        return self.paginate(
            "/v1/admin/training-jobs", **_without_none(user_id=user_id, status=status)
        )

    def admin_get_training_job(self: _Calls, job_id: str, *, lines: int = 200) -> dict[str, Any]:
        """Any user's training job with `user_id`, its `links`, and the last `lines` lines of
        its log (`log_tail`; `log_lines` in all)."""
        return self._object("GET", f"/v1/admin/training-jobs/{job_id}", params={"lines": lines})

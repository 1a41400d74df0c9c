"""The SDK's admin calls for every user's jobs: list them a page at a time, read one with its
events, cancel one.

GoshenClient (goshen.client) inherits them; imports only httpx and the standard library.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from goshen.client_http import _without_none


class _Calls(Protocol):
    """What these calls need of the client that inherits them."""

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...


def _moment(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


class AdminJobCalls:
    """Every user's jobs, for admins."""

    def admin_list_jobs(
        self: _Calls,
        *,
        status: str | None = None,
        model: str | None = None,
        user_id: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of every user's jobs, newest first: `data`, `has_more`, `next_cursor` (pass
        it as `cursor` for the next page). Times need a timezone; `model` is a catalog name."""
        params = _without_none(
            status=status,
            model=model,
            user_id=user_id,
            created_after=_moment(created_after),
            created_before=_moment(created_before),
            limit=limit,
            cursor=cursor,
        )
        return self._object("GET", "/v1/admin/jobs", params=params)

    def admin_get_job(self: _Calls, job_id: str) -> dict[str, Any]:
        """Any user's job with its logs, attempt errors and events (the last 500, oldest first)."""
        return self._object("GET", f"/v1/admin/jobs/{job_id}")

    def admin_cancel_job(self: _Calls, job_id: str) -> dict[str, Any]:
        """Cancel any user's job: a queued one ends at once, a running one at its next step;
        GoshenAPIError 409 when it already ended."""
        return self._object("POST", f"/v1/admin/jobs/{job_id}/cancel")

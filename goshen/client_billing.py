"""The SDK's calls over accounts and billing: a developer's own usage, and those admins run
accounts by (users, keys and their spend caps, credit grants and ledgers, usage and invoices
across every user).

GoshenClient (goshen.client) inherits them; imports only httpx and the standard library.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, Protocol

from goshen.client_http import _without_none


class _Calls(Protocol):
    """What these calls need of the client that inherits them."""

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...

    def paginate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]: ...


class AccountCalls:
    """A developer's own usage."""

    def usage(self: _Calls, *, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        """Your metered usage over [start, end) (ISO dates or times; this month by default):
        `totals`, `by_day`, `by_model`, and your `credit` now."""
        return self._object("GET", "/v1/usage", params=_without_none(start=start, end=end))


class AdminAccountCalls:
    """Admin calls over users, keys, credit and billing (an admin key)."""

    def admin_list_users(self: _Calls, *, limit: int = 100) -> Iterator[dict[str, Any]]:
        """Every user, newest first, fetched `limit` a page."""
        return self.paginate("/v1/admin/users", limit=limit)

    def admin_get_user(self: _Calls, user_id: str) -> dict[str, Any]:
        return self._object("GET", f"/v1/admin/users/{user_id}")

    def admin_update_user(self: _Calls, user_id: str, **changes: Any) -> dict[str, Any]:
        """Change a user's `name`, `role`, `disabled` or `unmetered`."""
        return self._object("PATCH", f"/v1/admin/users/{user_id}", json=changes)

    def admin_update_key(self: _Calls, key_id: str, **changes: Any) -> dict[str, Any]:
        """Rename any user's key or set its `monthly_spend_cap_micros` (None removes the cap)."""
        return self._object("PATCH", f"/v1/admin/keys/{key_id}", json=changes)

    def admin_balance(self: _Calls, user_id: str) -> dict[str, Any]:
        """A user's `balance_micros`, `held_micros` and `available_micros`."""
        return self._object("GET", f"/v1/admin/users/{user_id}/credits/balance")

    def admin_ledger(
        self: _Calls, user_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of a user's credit ledger, newest first (`data`, `next_cursor`)."""
        params = _without_none(limit=limit, cursor=cursor)
        return self._object("GET", f"/v1/admin/users/{user_id}/credits", params=params)

    def admin_add_credit(
        self: _Calls,
        user_id: str,
        amount_micros: int,
        *,
        kind: str = "grant",
        reason: str = "",
        expires_at: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Grant credit (`kind="grant"`) or correct a balance (`kind="adjustment"`, signed, with
        a reason). The same `idempotency_key` and body make one ledger entry, however often
        sent; without one, the call makes its own, so its retries cannot add twice."""
        body = _without_none(
            kind=kind, amount_micros=amount_micros, reason=reason, expires_at=expires_at
        )
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return self._object(
            "POST",
            f"/v1/admin/users/{user_id}/credits",
            json=body,
            headers=headers,
            idempotent=True,
        )

    def admin_usage(
        self: _Calls,
        group_by: str,
        *,
        start: str | None = None,
        end: str | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """Every user's usage over a range (default: this month), grouped by `user`, `model` or
        `day`, with the range's `totals`."""
        params = _without_none(
            group_by=group_by, start=start, end=end, user_id=user_id, limit=limit
        )
        return self._object("GET", "/v1/admin/usage", params=params)

    def admin_list_invoices(
        self: _Calls,
        *,
        user_id: str | None = None,
        month: str | None = None,
        status: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of every user's invoices, newest month first, with download URLs."""
        params = _without_none(
            user_id=user_id, month=month, status=status, limit=limit, cursor=cursor
        )
        return self._object("GET", "/v1/admin/invoices", params=params)

    def admin_storage(
        self: _Calls, *, user_id: str | None = None, limit: int = 100
    ) -> dict[str, Any]:
        """Each user's bytes kept now (`data`, most first, by kind: datasets), `has_more`."""
        params = _without_none(user_id=user_id, limit=limit)
        return self._object("GET", "/v1/admin/storage", params=params)

"""Python SDK for Goshen's HTTP API.

from goshen.client import GoshenClient
with GoshenClient("http://127.0.0.1:8000", api_key="gsk_...") as goshen:
    key = goshen.create_key("ci")
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpx

DEFAULT_TIMEOUT_SECONDS = 30.0


class GoshenAPIError(Exception):
    """The API answered with a problem (RFC 9457); `problem` holds its fields."""

    def __init__(self, status_code: int, problem: dict[str, Any]) -> None:
        self.status_code = status_code
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or "request failed"
        super().__init__(f"{status_code}: {detail}")


class GoshenClient:
    """A thin, typed-enough wrapper: one method per API operation, errors as GoshenAPIError."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> GoshenClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            raise GoshenAPIError(response.status_code, _problem(response))
        return response.json() if response.content else None

    def paginate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated list, fetching pages as needed."""
        cursor = None
        while True:
            page = self.request("GET", path, params=params | ({"cursor": cursor} if cursor else {}))
            yield from page["data"]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/healthz")

    def readiness(self) -> dict[str, Any]:
        response = self._http.get("/readyz")
        return response.json()

    def create_key(self, name: str, scopes: list[str] | None = None) -> dict[str, Any]:
        """A new key for the caller; the secret is in `["key"]`, returned this once only."""
        return self.request("POST", "/v1/keys", json=_without_none(name=name, scopes=scopes))

    def list_keys(self) -> list[dict[str, Any]]:
        return list(self.paginate("/v1/keys"))

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/keys/{key_id}")

    def admin_create_user(self, email: str, name: str = "", role: str = "developer") -> dict:
        return self.request(
            "POST", "/v1/admin/users", json={"email": email, "name": name, "role": role}
        )

    def admin_find_user(self, email: str) -> dict[str, Any] | None:
        return next(iter(self.paginate("/v1/admin/users", email=email)), None)

    def admin_create_key(
        self, user_id: str, name: str, scopes: list[str] | None = None
    ) -> dict[str, Any]:
        return self.request(
            "POST",
            f"/v1/admin/users/{user_id}/keys",
            json=_without_none(name=name, scopes=scopes),
        )

    def admin_list_keys(self, user_id: str | None = None) -> list[dict[str, Any]]:
        return list(self.paginate("/v1/admin/keys", **_without_none(user_id=user_id)))

    def admin_revoke_key(self, key_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/admin/keys/{key_id}")


def _without_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"status": response.status_code, "detail": response.text[:500]}
    return body if isinstance(body, dict) else {"status": response.status_code, "detail": body}

"""Platform health as the API reports it on /healthz and /readyz; no database access here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class ComponentStatus:
    """One component's health: `detail` says what failed, None when it is fine."""

    name: str
    ok: bool
    detail: str | None = None


@dataclass(frozen=True)
class HealthReport:
    """What the API said about the platform, and when it said it."""

    api_url: str
    components: list[ComponentStatus]
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return all(component.ok for component in self.components)

    @property
    def failing(self) -> list[ComponentStatus]:
        return [component for component in self.components if not component.ok]


def check_platform(api_url: str, timeout: float = TIMEOUT_SECONDS) -> HealthReport:
    """Ask the API whether it is up (/healthz) and whether its dependencies answer (/readyz)."""
    with httpx.Client(base_url=api_url, timeout=timeout) as client:
        api = _liveness(client)
        # An API that does not answer cannot report on its dependencies.
        return HealthReport(api_url, [api, *_readiness(client)] if api.ok else [api])


def _liveness(client: httpx.Client) -> ComponentStatus:
    try:
        response = client.get("/healthz")
    except httpx.HTTPError as exc:
        return ComponentStatus("API", False, f"cannot reach {client.base_url}: {_describe(exc)}")
    if response.status_code != 200:
        return ComponentStatus("API", False, f"/healthz answered {_summary(response)}")
    return ComponentStatus("API", True)


def _readiness(client: httpx.Client) -> list[ComponentStatus]:
    try:
        response = client.get("/readyz")
        checks = response.json()["checks"]
    except httpx.HTTPError as exc:
        return [ComponentStatus("Dependencies", False, f"/readyz failed: {_describe(exc)}")]
    except (ValueError, KeyError, TypeError):
        detail = f"/readyz answered {_summary(response)}, not a readiness report"
        return [ComponentStatus("Dependencies", False, detail)]
    return [_component(name, check) for name, check in checks.items()]


def _component(name: str, check: dict[str, Any]) -> ComponentStatus:
    label = name.replace("_", " ").capitalize()
    return ComponentStatus(label, bool(check.get("ok")), check.get("error"))


def _summary(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}: {response.text[:300]}"


def _describe(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

"""The dashboard against a real API: uvicorn on a temporary home (SQLite and PostgreSQL, as every
API test), an admin signed in through GOSHEN_DASHBOARD_API_KEY, pages run by Streamlit's AppTest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from goshen.client import GoshenClient
from goshen.config import Settings
from tests.fixtures.accounts import Account
from tests.fixtures.servers import serve_api

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PAGE_TIMEOUT_SECONDS = 60


@dataclass
class Dashboard:
    """The API the dashboard talks to, its admin, and an SDK client as that admin for seeding."""

    settings: Settings
    admin: Account
    api: GoshenClient
    monkeypatch: pytest.MonkeyPatch

    def open(self, page: str | None = None, *, key: str | None = None) -> AppTest:
        """Run the app on `views/<page>.py` (the default page when None), signed in with the
        admin's key, or with `key` ("": no configured key, so the sign-in form); the run's
        exceptions fail the test."""
        if key == "":
            self.monkeypatch.delenv("GOSHEN_DASHBOARD_API_KEY", raising=False)
        elif key is not None:
            self.monkeypatch.setenv("GOSHEN_DASHBOARD_API_KEY", key)
        app = AppTest.from_file(str(APP), default_timeout=PAGE_TIMEOUT_SECONDS)
        if page is not None:
            app.switch_page(f"views/{page}.py")
        app.run()
        assert not app.exception, [exception.value for exception in app.exception]
        return app


@pytest.fixture
def dashboard(
    serving_settings: Settings, admin: Account, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Dashboard]:
    """The dashboard's process environment pointed at a live API (the settings a worker from
    `start_worker` shares, with the test MLflow registry), signed in with the admin's key."""
    with serve_api(serving_settings) as live_api:
        yield from _dashboard(live_api, admin, monkeypatch, tmp_path)


def _dashboard(
    live_api: Settings, admin: Account, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Dashboard]:
    monkeypatch.setenv("GOSHEN_HOME", str(tmp_path / "dashboard-home"))
    monkeypatch.setenv("GOSHEN_HOST", live_api.host)
    monkeypatch.setenv("GOSHEN_API_PORT", str(live_api.api_port))
    monkeypatch.setenv("GOSHEN_DASHBOARD_API_KEY", admin.key)
    with GoshenClient(live_api.api_url, admin.key) as api:
        yield Dashboard(live_api, admin, api, monkeypatch)


def texts(elements: object) -> str:
    """Every element's value joined by newlines (for `in` checks over messages)."""
    return "\n".join(str(element.value) for element in elements)  # type: ignore[attr-defined]


def rendered(app: AppTest) -> str:
    """Everything a page shows as text: markdown, captions, messages, metrics, table cells."""
    parts = [
        texts(collection)
        for collection in (
            app.title,
            app.header,
            app.subheader,
            app.markdown,
            app.caption,
            app.text,
            app.code,
            app.success,
            app.info,
            app.warning,
            app.error,
        )
    ]
    parts += [f"{metric.label}: {metric.value}" for metric in app.metric]
    parts += [frame.value.to_csv(index=False) for frame in app.dataframe]
    return "\n".join(parts)

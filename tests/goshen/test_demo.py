"""The first-run walkthrough of `goshen demo`, against a real API server."""

from __future__ import annotations

import pytest

from goshen import demo
from goshen.client import GoshenAPIError, GoshenClient
from goshen.config import Settings


def test_walkthrough_runs_twice_and_keeps_one_admin(live_api: Settings) -> None:
    said: list[str] = []
    demo.walkthrough(live_api, say=said.append)
    assert "the revoked key is refused at once: HTTP 401" in said
    key_file = demo.admin_key_path(live_api)
    assert key_file.stat().st_mode & 0o077 == 0
    first_key = key_file.read_text().strip()

    demo.walkthrough(live_api, say=said.append)
    assert key_file.read_text().strip() == first_key
    with GoshenClient(live_api.api_url, first_key) as admin:
        assert admin.admin_find_user(demo.DEMO_ADMIN_EMAIL)["role"] == "admin"
        developer = admin.admin_find_user(demo.DEMO_DEVELOPER_EMAIL)
        assert len(admin.admin_list_keys(developer["id"])) == 4  # two runs, two keys each


def test_client_raises_problems(live_api: Settings) -> None:
    unknown = "gsk_" + "a" * 10 + "_" + "b" * 32
    with (
        GoshenClient(live_api.api_url, unknown) as client,
        pytest.raises(GoshenAPIError, match="invalid API key") as raised,
    ):
        client.list_keys()
    assert raised.value.status_code == 401
    assert raised.value.problem["status"] == 401

"""The first-run walkthrough of `goshen demo`, against a real API server (and, for the digits
grid, a worker and a tiny random-weights model in a real MLflow registry)."""

from __future__ import annotations

import pytest
from PIL import Image

from goshen import demo
from goshen.client import GoshenAPIError, GoshenClient
from goshen.config import Settings


def test_walkthrough_runs_twice_and_keeps_one_admin(live_api: Settings) -> None:
    said: list[str] = []
    demo.key_walkthrough(live_api, say=said.append)
    assert "the revoked key is refused at once: HTTP 401" in said
    key_file = demo.admin_key_path(live_api)
    assert key_file.stat().st_mode & 0o077 == 0
    first_key = key_file.read_text().strip()

    demo.key_walkthrough(live_api, say=said.append)
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


def test_the_developer_generates_a_grid_of_digits_through_the_api(  # type: ignore[no-untyped-def]
    serving_settings, run_api, start_worker, digits_model, developer
) -> None:
    start_worker()
    said: list[str] = []
    with run_api(serving_settings) as served:
        path = demo.generate_digits_grid(
            served, developer.key, said.append, model=digits_model.name
        )
    grid = Image.open(path)
    # Ten digits across, GRID_ROWS samples down, each 8x8 pixels shown 4 times larger.
    assert grid.size == (10 * 8 * 4, demo.GRID_ROWS * 8 * 4)
    assert any("10 jobs succeeded" in line for line in said)


def test_models_already_in_the_registry_are_not_trained_again(  # type: ignore[no-untyped-def]
    serving_settings, register_digits
) -> None:
    live = register_digits("digits-diffusion")
    said: list[str] = []
    demo.ensure_digits_models(serving_settings, said.append)  # no Dagster runs in this test
    assert said == [f"digits-diffusion v{live.version} is live in the MLflow registry"]

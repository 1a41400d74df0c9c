"""The first-run walkthrough of `goshen demo`, against a real API server (and, for the digits
grid, a worker and a tiny random-weights model in a real MLflow registry)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from PIL import Image

from goshen.client import GoshenAPIError, GoshenClient
from goshen.config import Settings
from goshen.db.models import Model
from goshen_launcher import demo
from tests.fixtures.accounts import Account
from tests.fixtures.models import RegisteredModel


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


def test_the_developer_generates_a_grid_of_digits_and_has_them_read_back(
    serving_settings: Settings,
    run_api: Callable[[Settings], AbstractContextManager[Settings]],
    start_worker: Callable[..., threading.Event],
    digits_model: Model,
    developer: Account,
    admin: Account,
    register_classifier: Callable[..., RegisteredModel],
) -> None:
    """The models have random weights: the walkthrough's calls are what is checked, not how
    well the generated digits read (tests/goshen/test_up.py checks that on trained ones)."""
    start_worker()
    said: list[str] = []
    register_classifier("demo-judge")
    with run_api(serving_settings) as served:
        grid = demo.generate_digits_grid(
            served, developer.key, said.append, model=digits_model.name
        )
        with GoshenClient(served.api_url, admin.key) as as_admin:
            as_admin.admin_register_model(
                name="demo-judge",
                registered_model="demo-judge",
                alias="production",
                pricing={"unit": "request", "price_micros": 0},
                visibility="public",
            )
            assert as_admin.admin_deploy_model("demo-judge")["status"] == "ready"
        share = demo.read_digits(served, developer.key, grid, said.append, model="demo-judge")
    saved = Image.open(grid.path)
    # Ten digits across, GRID_ROWS samples down, each 8x8 pixels shown 4 times larger.
    assert saved.size == (10 * 8 * 4, demo.GRID_ROWS * 8 * 4)
    assert grid.images.shape == (10 * demo.GRID_ROWS, 8, 8)
    assert grid.asked.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert any("10 jobs succeeded" in line for line in said)
    credit_lines = [line for line in said if line.startswith("developer's credit: ")]
    assert len(credit_lines) == 2 and "spent)" in credit_lines[-1], said
    assert sum(" cost " in line and line.endswith(" credits") for line in said) == 10, said
    assert 0.0 <= share <= 1.0
    assert said[-1].startswith("demo-judge read ") and f"of {10 * demo.GRID_ROWS} " in said[-1]


def test_models_already_in_the_registry_are_not_trained_again(
    serving_settings: Settings, register_digits: Callable[[str], RegisteredModel]
) -> None:
    live = register_digits("digits-diffusion")
    said: list[str] = []
    demo.ensure_digits_models(serving_settings, said.append)  # no Dagster runs in this test
    assert said == [f"digits-diffusion v{live.version} is live in the MLflow registry"]

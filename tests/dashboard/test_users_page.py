"""Users and keys: creating a user through the form (a duplicate shows the API's 409), issuing a
key whose secret is shown once, capping and revoking it, granting credit once however often the
form is sent with its Idempotency-Key, and disabling and enabling a user."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from goshen.client import GoshenAPIError, GoshenClient
from tests.dashboard.conftest import Dashboard, rendered, texts


def widget(widgets: Iterable[Any], label: str) -> Any:
    """The page's widget labeled `label`."""
    return next(each for each in widgets if each.label == label)


def open_user(dashboard: Dashboard, email: str) -> tuple[AppTest, dict[str, Any]]:
    """The page with a user made through the SDK picked in `User`."""
    user = dashboard.api.admin_create_user(email, "Test User")
    app = dashboard.open("users")
    widget(app.selectbox, "User").set_value(user["id"]).run()
    assert not app.exception and not app.error, texts(app.error)
    return app, user


def test_the_form_creates_a_user_and_shows_why_a_duplicate_is_refused(
    dashboard: Dashboard,
) -> None:
    app = dashboard.open("users")
    assert "Users and keys" in texts(app.title)
    assert dashboard.admin.user_id in rendered(app)

    widget(app.text_input, "Email").input("ada@example.com")
    widget(app.text_input, "Name").input("Ada Lovelace")
    widget(app.selectbox, "Role").set_value("admin")
    widget(app.button, "Create user").click().run()

    created = dashboard.api.admin_find_user("ada@example.com")
    assert created is not None and created["role"] == "admin" and created["name"] == "Ada Lovelace"
    assert "Created ada@example.com (admin)" in texts(app.success)
    assert widget(app.selectbox, "User").value == created["id"]
    assert "ada@example.com" in rendered(app)

    widget(app.text_input, "Email").input("ADA@example.com")
    widget(app.button, "Create user").click().run()
    assert not app.exception
    assert "Creating the user failed — Conflict (409)" in texts(app.error)
    assert "a user with email ada@example.com already exists" in texts(app.error)


def test_a_key_secret_shows_once_and_the_key_can_be_capped_and_revoked(
    dashboard: Dashboard,
) -> None:
    app, user = open_user(dashboard, "keys@example.com")
    widget(app.text_input, "Key name").input("production")
    widget(app.number_input, "Monthly spend cap (credits, 0 = none)").set_value(5.0)
    widget(app.button, "Issue key").click().run()

    secret = app.code[0].value
    assert secret.startswith("gsk_")
    assert "will not be shown again" in texts(app.success)
    [issued] = dashboard.api.admin_list_keys(user["id"])
    assert issued["monthly_spend_cap_micros"] == 5_000_000
    with GoshenClient(dashboard.settings.api_url, secret) as owner:
        assert [key["name"] for key in owner.list_keys()] == ["production"]
    app.run()
    assert secret not in rendered(app)
    assert all(secret not in repr(app.session_state[name]) for name in app.session_state)

    widget(app.selectbox, "Key").set_value(issued["id"]).run()
    widget(app.number_input, "Spend cap for this key (credits a month, 0 = none)").set_value(0.0)
    widget(app.button, "Set spend cap").click().run()
    assert "monthly spend cap none" in texts(app.success)
    assert dashboard.api.admin_list_keys(user["id"])[0]["monthly_spend_cap_micros"] is None

    widget(app.button, "Revoke key").click().run()
    widget(app.button, "Confirm").click().run()
    assert "revoked" in texts(app.success)
    assert dashboard.api.admin_list_keys(user["id"])[0]["revoked_at"] is not None
    with (
        GoshenClient(dashboard.settings.api_url, secret) as revoked,
        pytest.raises(GoshenAPIError) as refused,
    ):
        revoked.list_keys()
    assert refused.value.status_code == 401


def test_a_grant_submitted_again_adds_credit_once(dashboard: Dashboard) -> None:
    """The second click of a double click, or a click again once the first answered, sends the
    same request with the same Idempotency-Key: one entry. "New entry" makes a new one."""
    app, user = open_user(dashboard, "credit@example.com")
    before = dashboard.api.admin_balance(user["id"])["balance_micros"]
    widget(app.number_input, "Amount (credits)").set_value(25.0)
    widget(app.text_input, "Reason").input("welcome credit")

    widget(app.button, "Add to ledger").click().run()
    assert "Granted 25 credits: welcome credit." in texts(app.success)
    widget(app.button, "Add to ledger").click().run()

    assert not app.error, texts(app.error)
    assert "Already recorded, once" in texts(app.success)
    entries = dashboard.api.admin_ledger(user["id"])["data"]
    assert [entry["reason"] for entry in entries].count("welcome credit") == 1
    balance = dashboard.api.admin_balance(user["id"])["balance_micros"]
    assert balance == before + 25_000_000
    assert f"Balance: {balance / 1_000_000:g}" in rendered(app)
    assert "welcome credit" in rendered(app)

    widget(app.button, "New entry").click().run()
    widget(app.button, "Add to ledger").click().run()
    assert "Granted 25 credits: welcome credit." in texts(app.success)
    assert dashboard.api.admin_balance(user["id"])["balance_micros"] == before + 50_000_000


def test_disabling_a_user_refuses_its_keys_until_it_is_enabled(dashboard: Dashboard) -> None:
    app, user = open_user(dashboard, "off@example.com")
    secret = dashboard.api.admin_create_key(user["id"], "laptop")["key"]

    widget(app.button, "Disable user").click().run()
    widget(app.button, "Confirm").click().run()
    assert "Disabled off@example.com" in texts(app.success)
    assert dashboard.api.admin_get_user(user["id"])["disabled_at"] is not None
    with GoshenClient(dashboard.settings.api_url, secret) as disabled:
        with pytest.raises(GoshenAPIError) as refused:
            disabled.list_keys()
        assert refused.value.status_code == 401

        widget(app.button, "Enable user").click().run()
        assert dashboard.api.admin_get_user(user["id"])["disabled_at"] is None
        assert [key["name"] for key in disabled.list_keys()] == ["laptop"]

    widget(app.button, "Make unmetered").click().run()
    assert dashboard.api.admin_get_user(user["id"])["unmetered"] is True
    assert "Meter again" in [button.label for button in app.button]


def test_an_admin_cannot_disable_itself_and_is_told_why(dashboard: Dashboard) -> None:
    app = dashboard.open("users")
    widget(app.selectbox, "User").set_value(dashboard.admin.user_id).run()

    widget(app.button, "Disable user").click().run()
    widget(app.button, "Confirm").click().run()

    assert not app.exception
    assert "Disabling the user failed — Conflict (409)" in texts(app.error)
    assert dashboard.api.admin_get_user(dashboard.admin.user_id)["disabled_at"] is None

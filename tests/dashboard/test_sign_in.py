"""Sign-in: a configured admin key signs in, the form refuses a developer's key and an unknown
one with what to do, an admin's key typed in signs in, and signing out forgets the key."""

from __future__ import annotations

import os
from pathlib import Path

from tests.dashboard.conftest import Dashboard, rendered, texts
from tests.fixtures.accounts import Account


def test_a_configured_admin_key_signs_in_and_shows_every_section(dashboard: Dashboard) -> None:
    app = dashboard.open()

    assert not app.error
    assert f"Signed in with {dashboard.admin.key.rpartition('_')[0]}…" in texts(app.sidebar.caption)
    assert "Overview" in texts(app.title)


def test_the_form_refuses_a_developer_key_and_signs_in_an_admin(
    dashboard: Dashboard, developer: Account
) -> None:
    app = dashboard.open(key="")
    assert "Sign in to Goshen" in texts(app.title)

    app.text_input[0].input(developer.key)
    app.button[0].click().run()
    assert "not an admin" in texts(app.error)
    assert "goshen_admin" not in app.session_state

    app.text_input[0].input("gsk_" + "x" * 40)
    app.button[0].click().run()
    assert "does not know this key" in texts(app.error)

    app.text_input[0].input(dashboard.admin.key)
    app.button[0].click().run()
    assert not app.exception and not app.error
    assert "Overview" in texts(app.title)


def test_a_configured_key_that_is_not_an_admins_shows_why(
    dashboard: Dashboard, developer: Account
) -> None:
    app = dashboard.open(key=developer.key)

    assert "The key from GOSHEN_DASHBOARD_API_KEY was not used" in texts(app.warning)
    assert "Sign in to Goshen" in rendered(app)


def test_signing_out_forgets_the_key_and_does_not_sign_in_again(dashboard: Dashboard) -> None:
    app = dashboard.open()
    next(button for button in app.sidebar.button if button.label == "Sign out").click().run()

    assert "goshen_admin" not in app.session_state
    assert "Sign in to Goshen" in texts(app.title)
    app.run()
    assert "Sign in to Goshen" in texts(app.title)


def test_the_demo_key_file_signs_in_when_no_key_is_configured(dashboard: Dashboard) -> None:
    """`goshen demo` writes its admin's key under GOSHEN_HOME; the dashboard signs in with it."""
    home = Path(os.environ["GOSHEN_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "demo-admin-key").write_text(dashboard.admin.key + "\n")

    app = dashboard.open(key="")

    assert not app.error and not app.warning
    assert f"Signed in with {dashboard.admin.key.rpartition('_')[0]}…" in texts(app.sidebar.caption)


def test_a_configured_key_is_not_used_where_other_machines_reach_the_dashboard(
    dashboard: Dashboard,
) -> None:
    """Bound to every interface, a configured key would make anyone who opens it an admin."""
    dashboard.monkeypatch.setenv("GOSHEN_HOST", "0.0.0.0")  # noqa: S104 - what is tested

    app = dashboard.open()

    assert "The key from GOSHEN_DASHBOARD_API_KEY was not used" in texts(app.warning)
    assert "GOSHEN_HOST=0.0.0.0" in texts(app.warning)
    assert "goshen_admin" not in app.session_state
    assert "Sign in to Goshen" in texts(app.title)

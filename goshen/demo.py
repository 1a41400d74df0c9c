"""`goshen demo`: the first-run walkthrough, run against a platform that `goshen up` started.

It makes (or reuses) an admin key, then drives the API the way a team's first day would: create a
developer, issue the developer a key, let the developer make and revoke a key of their own, and
show that the revoked key is refused at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from goshen import accounts
from goshen.client import GoshenAPIError, GoshenClient
from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, session_scope
from goshen.db.models import Role

DEMO_ADMIN_EMAIL = "admin@goshen.local"
DEMO_DEVELOPER_EMAIL = "developer@goshen.local"


def admin_key_path(settings: Settings) -> Path:
    return settings.home_dir / "demo-admin-key"


def ensure_admin_key(settings: Settings) -> str:
    """The demo admin's key, kept in a 0600 file under GOSHEN_HOME; made on the first run."""
    path = admin_key_path(settings)
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            if path.exists():
                saved = path.read_text().strip()
                if accounts.authenticate(session, saved) is not None:
                    return saved
            user = accounts.get_user_by_email(session, DEMO_ADMIN_EMAIL)
            if user is None:
                user = accounts.create_user(session, email=DEMO_ADMIN_EMAIL, role=Role.admin)
            _, plaintext = accounts.issue_key(session, user, name="goshen demo")
    finally:
        engine.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(plaintext + "\n")
    return plaintext


def walkthrough(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Drive the key lifecycle through the HTTP API; raises GoshenAPIError if a step fails."""
    admin_key = ensure_admin_key(settings)
    with GoshenClient(settings.api_url, admin_key) as admin:
        say(f"API ready: {admin.readiness()['status']}")
        developer = admin.admin_find_user(DEMO_DEVELOPER_EMAIL) or admin.admin_create_user(
            DEMO_DEVELOPER_EMAIL, name="Demo Developer"
        )
        issued = admin.admin_create_key(developer["id"], name="demo")
        say(f"admin issued {developer['email']} the key {issued['prefix']}…{issued['last4']}")
    with GoshenClient(settings.api_url, issued["key"]) as dev:
        temporary = dev.create_key("temporary", scopes=["keys"])
        say(f"developer made a key of their own: {temporary['prefix']}…{temporary['last4']}")
        say(
            f"developer's keys: {[key['name'] for key in dev.list_keys() if not key['revoked_at']]}"
        )
        dev.revoke_key(temporary["id"])
    with GoshenClient(settings.api_url, temporary["key"]) as revoked:
        try:
            revoked.list_keys()
        except GoshenAPIError as exc:
            say(f"the revoked key is refused at once: HTTP {exc.status_code}")
        else:
            raise RuntimeError("the API accepted a revoked key; this is a bug, please report it")
    say(f"admin key for the API and dashboard: {admin_key_path(settings)}")

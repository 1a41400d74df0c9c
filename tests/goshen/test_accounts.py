"""Users and API keys: what is stored, how keys authenticate, and which scopes a key may get."""

from __future__ import annotations

import math
import string

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from goshen import accounts, keys
from goshen.db import session_scope
from goshen.db.models import ApiKey, Role, utcnow
from goshen.errors import ConflictError, InvalidInputError


def test_key_shape_and_entropy() -> None:
    made = {keys.generate_key().plaintext for _ in range(200)}
    assert len(made) == 200
    for plaintext in made:
        prefix = keys.key_prefix(plaintext)
        assert prefix is not None and plaintext.startswith(prefix + "_")
        secret = plaintext.rsplit("_", 1)[1]
        assert set(secret) <= set(string.ascii_letters + string.digits)
        assert len(secret) * math.log2(62) >= 128


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "gsk_",
        "Bearer gsk_x",
        "sk_abcdefghij_" + "a" * 32,
        "gsk_abcdefghij_" + "a" * 31,
        "gsk_abcdéfghij_" + "a" * 32,
        "gsk_abcdefghij_" + "a" * 31 + "-",
    ],
)
def test_malformed_keys_have_no_prefix(presented: str) -> None:
    assert keys.key_prefix(presented) is None


def test_only_a_hash_prefix_and_last4_are_stored(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        user = accounts.create_user(
            session, email="Dev@Example.com ", role=Role.developer, credits_micros=0
        )
        _, plaintext = accounts.issue_key(session, user, name="laptop")
    assert user.email == "dev@example.com"
    with sessions() as session:
        stored = session.scalars(select(ApiKey)).one()
        columns = {c.key: getattr(stored, c.key) for c in ApiKey.__table__.columns}
    assert plaintext not in {str(v) for v in columns.values()}
    assert stored.secret_hash == keys.hash_key(plaintext)
    assert plaintext.startswith(stored.prefix) and plaintext.endswith(stored.last4)


def test_authenticate_checks_secret_revocation_and_disabled_users(
    sessions: sessionmaker[Session],
) -> None:
    with session_scope(sessions) as session:
        user = accounts.create_user(
            session, email="a@example.com", role=Role.developer, credits_micros=0
        )
        key, plaintext = accounts.issue_key(session, user, name="k")
    forged = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    with session_scope(sessions) as session:
        principal = accounts.authenticate(session, plaintext)
        assert principal is not None and principal.user.id == user.id
        assert principal.key.last_used_at is not None
        assert accounts.authenticate(session, forged) is None
        assert not principal.is_admin
    with session_scope(sessions) as session:
        accounts.revoke_key(accounts.get_key(session, key.id))
    with session_scope(sessions) as session:
        assert accounts.authenticate(session, plaintext) is None
    with session_scope(sessions) as session:
        _, second = accounts.issue_key(session, session.merge(user), name="k2")
        session.merge(user).disabled_at = utcnow()
    with session_scope(sessions) as session:
        assert accounts.authenticate(session, second) is None


def test_scope_rules(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        dev = accounts.create_user(
            session, email="d@example.com", role=Role.developer, credits_micros=0
        )
        admin = accounts.create_user(
            session, email="a@example.com", role=Role.admin, credits_micros=0
        )
        dev_key, _ = accounts.issue_key(session, dev, name="all")
        assert "admin" not in dev_key.scopes and "keys" in dev_key.scopes
        admin_key, _ = accounts.issue_key(session, admin, name="all")
        assert "admin" in admin_key.scopes
        with pytest.raises(InvalidInputError, match="only admin users"):
            accounts.issue_key(session, dev, name="x", scopes=["admin"])
        with pytest.raises(InvalidInputError, match="unknown scopes \\['root'\\]"):
            accounts.issue_key(session, dev, name="x", scopes=["root"])
        narrow, _ = accounts.issue_key(session, dev, name="narrow", scopes=["keys"])
        with pytest.raises(InvalidInputError, match="cannot grant scopes it does not hold"):
            accounts.issue_key(session, dev, name="x", scopes=["generate"], granting=narrow)
        inherited, _ = accounts.issue_key(session, dev, name="child", granting=narrow)
        assert inherited.scopes == ["keys"]


def test_duplicate_email_is_a_conflict(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        accounts.create_user(session, email="a@example.com", role=Role.developer, credits_micros=0)
    with pytest.raises(ConflictError, match="already exists"), session_scope(sessions) as session:
        accounts.create_user(session, email="A@example.com", role=Role.admin, credits_micros=0)
    with pytest.raises(InvalidInputError, match="not an email"), session_scope(sessions) as session:
        accounts.create_user(session, email="nobody", role=Role.admin, credits_micros=0)

"""Users and their API keys: create, authenticate, scope checks and revocation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from goshen import keys
from goshen.billing import ledger
from goshen.db import access
from goshen.db.models import ApiKey, Role, User, utcnow
from goshen.errors import ConflictError, InvalidInputError, NotFoundError

Scope = Literal[
    "generate", "predict", "jobs", "models", "datasets", "training", "keys", "usage", "admin"
]
SCOPES: tuple[str, ...] = get_args(Scope)
DEVELOPER_SCOPES: tuple[str, ...] = tuple(scope for scope in SCOPES if scope != "admin")
# Writing last_used_at on every request would turn each read into a write; a minute is enough.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key presented and the user it belongs to."""

    user: User
    key: ApiKey

    @property
    def is_admin(self) -> bool:
        return self.user.role == Role.admin and "admin" in self.key.scopes

    def has_scope(self, scope: str) -> bool:
        return scope in self.key.scopes


def normalize_email(email: str) -> str:
    value = email.strip().lower()
    local, _, domain = value.partition("@")
    if not local or "." not in domain or any(c.isspace() for c in value):
        raise InvalidInputError(f"{email!r} is not an email address", field="email")
    return value


def create_user(
    session: Session, *, email: str, name: str = "", role: Role, credits_micros: int
) -> User:
    """A new user with a promotional grant of `credits_micros` (GOSHEN_NEW_USER_CREDITS)."""
    user = User(email=normalize_email(email), name=name, role=role)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        raise ConflictError(f"a user with email {user.email} already exists") from None
    if credits_micros > 0:
        ledger.grant(
            session,
            user_id=user.id,
            source=f"signup:{user.id}",
            amount_micros=credits_micros,
            reason="new-user credits (GOSHEN_NEW_USER_CREDITS)",
        )
    return user


def get_user(session: Session, user_id: str) -> User:
    """A user by id; NotFoundError if there is none."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user with id {user_id}")
    return user


def get_user_by_email(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == normalize_email(email)))


def check_scopes(
    requested: Sequence[str] | None, *, owner: User, granting: ApiKey | None
) -> list[str]:
    """The scopes a new key gets: never more than its owner's role or the granting key allow."""
    if requested is None:
        allowed = SCOPES if owner.role == Role.admin else DEVELOPER_SCOPES
        requested = [s for s in allowed if granting is None or s in granting.scopes]
    unknown = sorted(set(requested) - set(SCOPES))
    if unknown:
        raise InvalidInputError(
            f"unknown scopes {unknown}; choose from {list(SCOPES)}", field="scopes"
        )
    if "admin" in requested and owner.role != Role.admin:
        raise InvalidInputError("only admin users can hold the 'admin' scope", field="scopes")
    if granting is not None:
        beyond = sorted(set(requested) - set(granting.scopes))
        if beyond:
            raise InvalidInputError(
                f"a key cannot grant scopes it does not hold: {beyond}", field="scopes"
            )
    if not requested:
        raise InvalidInputError("a key needs at least one scope", field="scopes")
    return [s for s in SCOPES if s in requested]


def issue_key(
    session: Session,
    owner: User,
    *,
    name: str,
    scopes: Sequence[str] | None = None,
    granting: ApiKey | None = None,
    monthly_spend_cap_micros: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for `owner`; returns the row and the plaintext, which is never stored."""
    if owner.disabled_at is not None:
        raise ConflictError(f"user {owner.id} is disabled; enable it before issuing keys")
    new = keys.generate_key()
    key = ApiKey(
        user_id=owner.id,
        name=name,
        prefix=new.prefix,
        secret_hash=new.secret_hash,
        last4=new.last4,
        scopes=check_scopes(scopes, owner=owner, granting=granting),
        monthly_spend_cap_micros=monthly_spend_cap_micros,
    )
    session.add(key)
    session.flush()
    return key, new.plaintext


def authenticate(session: Session, plaintext: str) -> Principal | None:
    """The principal for a presented key, or None if it is unknown, revoked or disabled.

    Also notes the key's use (`last_used_at`, at minute resolution) on the session's objects.
    """
    principal = find_principal(session, plaintext)
    if principal is not None and needs_touch(principal.key):
        principal.key.last_used_at = utcnow()
    return principal


def find_principal(session: Session, plaintext: str) -> Principal | None:
    """The principal for a presented key, reading only; None if unknown, revoked or disabled."""
    prefix = keys.key_prefix(plaintext)
    if prefix is None:
        return None
    row = session.execute(
        select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.prefix == prefix)
    ).first()
    if row is None:
        return None
    key, user = row
    if not keys.matches(plaintext, key.secret_hash):
        return None
    if key.revoked_at is not None or user.disabled_at is not None:
        return None
    return Principal(user=user, key=key)


def needs_touch(key: ApiKey) -> bool:
    """Whether the key's last_used_at is older than its resolution."""
    return key.last_used_at is None or utcnow() - key.last_used_at >= LAST_USED_RESOLUTION


def touch_key(session: Session, key_id: str) -> None:
    """Record a key's use now (callers check `needs_touch` first: it is a write)."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


def revoke_key(key: ApiKey) -> ApiKey:
    """Revoke at once; revoking twice keeps the first time."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def update_key(key: ApiKey, changes: Mapping[str, Any]) -> ApiKey:
    """Rename a key or change its monthly spend cap (`changes` by field); a revoked key cannot
    change."""
    if key.revoked_at is not None:
        raise ConflictError(f"key {key.id} is revoked; revoked keys cannot change")
    for field, value in changes.items():
        setattr(key, field, value)
    return key


def get_key(session: Session, key_id: str, *, owner_id: str | None = None) -> ApiKey:
    """A key by id; with `owner_id`, another user's key is reported as missing."""
    return access.get_owned(session, ApiKey, key_id, owner_id, "key")


def create_admin(
    session: Session, *, email: str, name: str = "", credits_micros: int
) -> tuple[User, ApiKey, str]:
    """A new admin user with one key holding every scope (and the new-user grant)."""
    user = create_user(
        session, email=email, name=name, role=Role.admin, credits_micros=credits_micros
    )
    key, plaintext = issue_key(session, user, name="admin (goshen admin create)")
    return user, key, plaintext

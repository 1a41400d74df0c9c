"""Standard Webhooks v1 signing secrets: one `whsec_` secret per user, made on first use.

Signing and its check are the SDK's (goshen.webhooks), so that what the platform signs and what
receivers check are one implementation; they are re-exported here for the server's callers.
"""

from __future__ import annotations

import base64
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from goshen.db.models import User
from goshen.webhooks import (
    SECRET_PREFIX,
    WebhookVerificationError,
    sign,
    signature_headers,
    verify,
)

__all__ = [
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "new_webhook_secret",
    "sign",
    "signature_headers",
    "verify",
    "webhook_secret_for",
]
SECRET_BYTES = 32


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_secret_for(session: Session, user: User) -> str:
    """The user's signing secret, made and stored on first use.

    Concurrent first uses end with one secret: only an UPDATE that still sees NULL writes, and
    everyone re-reads what was stored.
    """
    if user.webhook_secret:
        return user.webhook_secret
    session.execute(
        update(User)
        .where(User.id == user.id, User.webhook_secret.is_(None))
        .values(webhook_secret=new_webhook_secret())
        .execution_options(synchronize_session=False)
    )
    stored = session.scalar(select(User.webhook_secret).where(User.id == user.id))
    assert stored is not None
    set_committed_value(user, "webhook_secret", stored)
    return stored

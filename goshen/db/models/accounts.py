"""Accounts: users, their roles and their API keys."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from goshen.db.models.base import Base, created_at_column, enum_type, id_column


class Role(StrEnum):
    admin = "admin"
    developer = "developer"


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = id_column("usr")
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[Role] = mapped_column(enum_type(Role), default=Role.developer)
    created_at: Mapped[datetime] = created_at_column()
    disabled_at: Mapped[datetime | None]
    # Metered (held, captured) but never refused for want of credit, like admins.
    unmetered: Mapped[bool] = mapped_column(Boolean, default=False)
    # Signs this user's webhooks (Standard Webhooks `whsec_...`); made on first use.
    webhook_secret: Mapped[str | None] = mapped_column(String(64))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = id_column("key")
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    last4: Mapped[str] = mapped_column(String(4))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = created_at_column()
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Most the key may spend in a calendar month (UTC); None: only the account's credit limits it.
    monthly_spend_cap_micros: Mapped[int | None] = mapped_column(BigInteger)

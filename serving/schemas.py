"""Request and response bodies: requests reject unknown fields; responses hold no storage fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from goshen.db.models import ApiKey, Role

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyCreate(RequestBody):
    name: Name
    scopes: list[str] | None = Field(
        default=None,
        max_length=20,
        description="scopes for the new key; default: every scope the owner and this key hold",
    )


class PublicBody(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class KeyPublic(PublicBody):
    id: str
    user_id: str
    name: str
    prefix: str
    last4: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="the secret API key; shown only in this response")

    @classmethod
    def of(cls, key: ApiKey, plaintext: str) -> KeyCreated:
        return cls(**KeyPublic.model_validate(key).model_dump(), key=plaintext)


class UserCreate(RequestBody):
    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=320)]
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    role: Role = Role.developer


class UserUpdate(RequestBody):
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    role: Role | None = None
    disabled: bool | None = Field(default=None, description="true disables the user and its keys")


class UserPublic(PublicBody):
    id: str
    email: str
    name: str
    role: Role
    created_at: datetime
    disabled_at: datetime | None

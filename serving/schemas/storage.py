"""Bodies of the admin storage route: what each user keeps on the platform now."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class StoredKind(BaseModel):
    kind: str = Field(description="`datasets`: uploaded datasets, as their rows record them")
    bytes: int = Field(description="bytes of this kind the user keeps now")
    objects: int = Field(description="how many there are (datasets)")


class UserStorage(BaseModel):
    user_id: str
    email: str
    bytes: int = Field(description="every kind's bytes together")
    kinds: list[StoredKind] = Field(description="by kind, largest first")


class AdminStoragePublic(BaseModel):
    """GET /v1/admin/storage: each user's bytes kept now, largest first."""

    measured_at: datetime = Field(description="when these figures were read")
    data: list[UserStorage] = Field(description="users with anything stored, most bytes first")
    has_more: bool = Field(description="more users than `limit`: those past it are left out")

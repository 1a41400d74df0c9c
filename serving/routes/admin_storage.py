"""Admin route over what every user keeps on the platform now."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from goshen.db.models import Dataset, User, utcnow
from goshen.ids import id_pattern
from serving.http.dependencies import AdminPrincipal, ReadSessionDep
from serving.schemas.storage import AdminStoragePublic, StoredKind, UserStorage

router = APIRouter(prefix="/v1/admin", tags=["admin"])
MAX_USERS = 1000
UserFilter = Annotated[str | None, Query(pattern=id_pattern("usr"), description="only this user's")]


@router.get("/storage")
def get_storage(
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    user_id: UserFilter = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_USERS, description=f"users to answer, at most {MAX_USERS}")
    ] = 100,
) -> AdminStoragePublic:
    """Each user's bytes kept now, most first: the first `limit` users, `has_more` when more
    keep anything. It counts datasets only, by the bytes their rows record
    (`datasets.size_bytes`, whatever their status), so it answers from one grouped query.
    Trained and uploaded models and generated outputs are left out: no table records their
    size, and measuring them means reading the registry and listing the artifact store, which
    the daily `storage_daily` snapshot does (billing/storage_daily/<day>.parquet)."""
    stored = func.sum(Dataset.size_bytes).label("bytes")
    query = (
        select(Dataset.user_id, User.email, stored, func.count().label("objects"))
        .join(User, User.id == Dataset.user_id)
        .group_by(Dataset.user_id, User.email)
        .having(stored > 0)
        .order_by(stored.desc(), Dataset.user_id)
        .limit(limit + 1)
    )
    if user_id is not None:
        query = query.where(Dataset.user_id == user_id)
    rows = session.execute(query).all()
    return AdminStoragePublic(
        measured_at=utcnow(),
        data=[
            UserStorage(
                user_id=owner,
                email=email,
                bytes=int(size),
                kinds=[StoredKind(kind="datasets", bytes=int(size), objects=objects)],
            )
            for owner, email, size, objects in rows[:limit]
        ],
        has_more=len(rows) > limit,
    )

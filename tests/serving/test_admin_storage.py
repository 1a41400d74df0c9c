"""GET /v1/admin/storage: each user's dataset bytes now, most first, capped; admins only."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import Dataset, DatasetKind, DatasetStatus
from tests.fixtures.accounts import Account


def _dataset(session: Session, account: Account, size: int, status: DatasetStatus) -> None:
    session.add(
        Dataset(
            user_id=account.user_id,
            name="digits",
            kind=DatasetKind.tabular,
            status=status,
            storage_prefix="datasets/x",
            size_bytes=size,
        )
    )


def test_only_admins_read_it(client: TestClient, admin: Account, developer: Account) -> None:
    assert client.get("/v1/admin/storage", headers=developer.headers).status_code == 403
    assert client.get("/v1/admin/storage").status_code == 401
    assert client.get("/v1/admin/storage", headers=admin.headers).status_code == 200


def test_each_users_dataset_bytes_most_first_and_capped(
    client: TestClient,
    admin: Account,
    developer: Account,
    make_account: Callable[..., Account],
    sessions: sessionmaker[Session],
) -> None:
    larger, empty = make_account(), make_account()
    with session_scope(sessions) as session:
        _dataset(session, developer, 1_000, DatasetStatus.ready)
        _dataset(session, developer, 500, DatasetStatus.failed)
        _dataset(session, larger, 5_000_000, DatasetStatus.ready)
        _dataset(session, empty, 0, DatasetStatus.uploaded)

    answer = client.get("/v1/admin/storage", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    storage = answer.json()
    assert [(user["user_id"], user["bytes"]) for user in storage["data"]] == [
        (larger.user_id, 5_000_000),
        (developer.user_id, 1_500),
    ]
    email = client.get(f"/v1/admin/users/{developer.user_id}", headers=admin.headers).json()
    assert storage["data"][1]["email"] == email["email"]
    assert storage["data"][1]["kinds"] == [{"kind": "datasets", "bytes": 1_500, "objects": 2}]
    assert not storage["has_more"]

    capped = client.get("/v1/admin/storage?limit=1", headers=admin.headers).json()
    assert [user["user_id"] for user in capped["data"]] == [larger.user_id] and capped["has_more"]
    mine = client.get(f"/v1/admin/storage?user_id={developer.user_id}", headers=admin.headers)
    assert [user["bytes"] for user in mine.json()["data"]] == [1_500]
    for params in ({"user_id": "not-a-user"}, {"limit": 0}, {"limit": 1001}):
        assert (
            client.get("/v1/admin/storage", params=params, headers=admin.headers).status_code == 422
        )

"""make_store: the local folder by default, S3 under its normalized prefix when configured."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.client import BaseClient

from goshen.storage import make_store
from goshen.storage.local import LocalArtifactStore
from tests.goshen.storage.harness import s3_settings, store_settings

if TYPE_CHECKING:
    from tests.fixtures.storage import S3Server


# --- configuration -------------------------------------------------------------------------------


def test_make_store_builds_the_local_backend_by_default(tmp_path: Path) -> None:
    store = make_store(store_settings(home=tmp_path))
    assert isinstance(store, LocalArtifactStore)
    store.put("a/b.txt", b"x")
    assert (tmp_path / "artifacts" / "a" / "b.txt").read_bytes() == b"x"


def test_make_store_builds_s3_under_the_normalized_prefix(
    s3_server: S3Server, s3_client: BaseClient
) -> None:
    bucket = f"goshen-test-{secrets.token_hex(6)}"
    s3_client.create_bucket(Bucket=bucket)
    settings = s3_settings(s3_server, storage_backend="s3", s3_bucket=bucket, s3_prefix="/team/a/")
    store = make_store(settings)
    store.put("b.txt", b"x")
    stored = s3_client.get_object(Bucket=bucket, Key="team/a/b.txt")
    assert stored["Body"].read() == b"x"

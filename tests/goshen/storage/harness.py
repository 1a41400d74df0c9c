"""The artifact store under test on either backend, with raw access to its folder or bucket; the
settings that build it; and every operation that takes a key."""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
from botocore.client import BaseClient

from goshen.config import Settings
from goshen.errors import PermissionDeniedError
from goshen.storage import ArtifactStore, ObjectInfo, make_store, verify_signed_url
from goshen.storage.local import LocalArtifactStore
from goshen.storage.s3 import S3ArtifactStore

if TYPE_CHECKING:
    from tests.fixtures.storage import S3Server

SECRET_KEY = "storage-test-secret-" + "k" * 32
PREFIX = "tenant"  # the local root's folder name and the S3 key prefix, so raw listings match
TTL_SECONDS = 600


@dataclass
class Harness:
    """A store under test plus raw access to its medium that bypasses the store's key checks."""

    store: ArtifactStore
    raw_keys: Callable[[], list[str]]  # every file under tmp_path, or every key in the bucket
    raw_put: Callable[[str, bytes], None]
    download: Callable[[str], tuple[int, bytes]]  # fetch a signed URL as a client would


def store_settings(**overrides: Any) -> Settings:
    return Settings(
        _env_file=None, secret_key=SECRET_KEY, signed_url_ttl_seconds=TTL_SECONDS, **overrides
    )


def s3_settings(server: S3Server, **overrides: Any) -> Settings:
    """Settings that reach the loopback server with its dummy credentials, never ~/.aws."""
    return store_settings(
        s3_endpoint_url=server.endpoint_url,
        s3_region=server.region,
        s3_access_key_id=server.access_key_id,
        s3_secret_access_key=server.secret_access_key,
        **overrides,
    )


def local_harness(tmp_path: Path) -> Harness:
    store = make_store(store_settings(storage_path=tmp_path / PREFIX))
    assert isinstance(store, LocalArtifactStore)

    def raw_keys() -> list[str]:
        files = (p for p in tmp_path.rglob("*") if p.is_file())
        return sorted(p.relative_to(tmp_path).as_posix() for p in files)

    def raw_put(name: str, data: bytes) -> None:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)

    return Harness(store, raw_keys, raw_put, partial(_serve_local_download, store))


def _serve_local_download(store: ArtifactStore, url: str) -> tuple[int, bytes]:
    """What the API's /v1/files route does: verify the link, then stream the unquoted key."""
    parts = urlsplit(url)
    key = unquote(parts.path.removeprefix("/v1/files/"))
    query = dict(parse_qsl(parts.query))
    try:
        verify_signed_url(key, int(query["expires"]), query["signature"], SECRET_KEY.encode())
    except PermissionDeniedError:
        return 403, b""
    return 200, b"".join(store.stream(key))


def s3_harness(client: BaseClient) -> Harness:
    bucket = f"goshen-test-{secrets.token_hex(6)}"
    client.create_bucket(Bucket=bucket)
    store = S3ArtifactStore(bucket, f"{PREFIX}/", client, default_ttl_seconds=TTL_SECONDS)

    def raw_keys() -> list[str]:
        listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return sorted(item["Key"] for item in listing)

    def raw_put(name: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=name, Body=data)

    def download(url: str) -> tuple[int, bytes]:
        response = httpx.get(url, trust_env=False)
        return response.status_code, response.content

    return Harness(store, raw_keys, raw_put, download)


def keys_of(infos: list[ObjectInfo]) -> list[str]:
    return [info.key for info in infos]


OPERATIONS: dict[str, Callable[[ArtifactStore, str], object]] = {
    "put bytes": lambda store, key: store.put(key, b"owned"),
    "put file": lambda store, key: store.put(key, io.BytesIO(b"owned")),
    "get": lambda store, key: store.get(key),
    "stream": lambda store, key: store.stream(key),
    "size": lambda store, key: store.size(key),
    "exists": lambda store, key: store.exists(key),
    "delete": lambda store, key: store.delete(key),
    "delete_prefix": lambda store, key: store.delete_prefix(key),
    "list": lambda store, key: store.list(key),
    "signed_url": lambda store, key: store.signed_url(key),
}

"""Artifact store conformance: tests taking `store` or `harness` run on a folder and on S3."""

from __future__ import annotations

import io
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest
from botocore.client import BaseClient

from goshen.config import Settings
from goshen.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from goshen.storage import (
    ArtifactStore,
    ObjectInfo,
    artifact_key,
    make_store,
    s3,
    verify_signed_url,
)
from goshen.storage.local import LocalArtifactStore
from goshen.storage.s3 import S3ArtifactStore, make_s3_client
from goshen.storage.store import CHUNK_SIZE

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


def _settings(**overrides: Any) -> Settings:
    return Settings(
        _env_file=None, secret_key=SECRET_KEY, signed_url_ttl_seconds=TTL_SECONDS, **overrides
    )


def _s3_settings(server: S3Server, **overrides: Any) -> Settings:
    """Settings that reach the loopback server with its dummy credentials, never ~/.aws."""
    return _settings(
        s3_endpoint_url=server.endpoint_url,
        s3_region=server.region,
        s3_access_key_id=server.access_key_id,
        s3_secret_access_key=server.secret_access_key,
        **overrides,
    )


def _local_harness(tmp_path: Path) -> Harness:
    store = make_store(_settings(storage_path=tmp_path / PREFIX))
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


def _s3_harness(client: BaseClient) -> Harness:
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


@pytest.fixture(scope="session")
def s3_client(s3_server: S3Server) -> BaseClient:
    """The client make_store builds for these settings, made once since boto3 clients are slow."""
    return make_s3_client(_s3_settings(s3_server))


@pytest.fixture(params=["local", "s3"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "local":
        return _local_harness(tmp_path)
    return _s3_harness(request.getfixturevalue("s3_client"))


@pytest.fixture
def store(harness: Harness) -> ArtifactStore:
    return harness.store


@pytest.fixture
def local_store(tmp_path: Path) -> LocalArtifactStore:
    store = _local_harness(tmp_path).store
    assert isinstance(store, LocalArtifactStore)
    return store


# --- reading and writing -------------------------------------------------------------------------


def test_put_then_get_returns_the_bytes_and_describes_the_object(store: ArtifactStore) -> None:
    before = datetime.now(UTC)
    info = store.put("runs/run_1/metrics.json", b'{"loss": 0.25}')
    assert (info.key, info.size, info.content_type) == (
        "runs/run_1/metrics.json",
        14,
        "application/json",
    )
    assert info.last_modified.utcoffset() == timedelta(0)
    assert abs(info.last_modified - before) < timedelta(minutes=1)
    assert store.get("runs/run_1/metrics.json") == b'{"loss": 0.25}'


def test_put_keeps_an_explicit_content_type(store: ArtifactStore) -> None:
    info = store.put("m/model.onnx", b"x", content_type="application/onnx")
    assert info.content_type == "application/onnx"


def test_put_replaces_an_existing_object(store: ArtifactStore) -> None:
    store.put("a.txt", b"first version")
    store.put("a.txt", b"second")
    assert store.get("a.txt") == b"second"
    assert store.size("a.txt") == 6


def test_large_file_object_is_stored_and_streamed_back_in_chunks(store: ArtifactStore) -> None:
    data = random.Random(7).randbytes(3 * CHUNK_SIZE + 123)
    info = store.put("datasets/ds_1/images.zip", io.BytesIO(data))
    chunks = list(store.stream("datasets/ds_1/images.zip"))
    assert info.size == store.size("datasets/ds_1/images.zip") == len(data)
    assert [len(chunk) for chunk in chunks] == [CHUNK_SIZE] * 3 + [123]
    assert b"".join(chunks) == data


def test_stream_uses_the_requested_chunk_size(store: ArtifactStore) -> None:
    store.put("k", b"0123456789")
    assert list(store.stream("k", chunk_size=4)) == [b"0123", b"4567", b"89"]


def test_empty_object_roundtrips(store: ArtifactStore) -> None:
    store.put("empty", b"")
    assert (store.get("empty"), list(store.stream("empty")), store.size("empty")) == (b"", [], 0)


@pytest.mark.parametrize("operation", ["get", "stream", "size"])
def test_missing_key_is_not_found_and_named(store: ArtifactStore, operation: str) -> None:
    store.put("models/other.onnx", b"x")
    # stream must fail when called, before iteration, so a route can answer 404 cleanly.
    with pytest.raises(NotFoundError, match=r"models/missing\.onnx"):
        getattr(store, operation)("models/missing.onnx")


def test_a_folder_is_not_an_object(store: ArtifactStore) -> None:
    store.put("a/b/c.txt", b"x")
    assert not store.exists("a/b")
    with pytest.raises(NotFoundError):
        store.get("a/b")
    with pytest.raises(NotFoundError):
        store.size("a/b")


def test_exists_follows_put_and_delete(store: ArtifactStore) -> None:
    assert not store.exists("x/y.bin")
    store.put("x/y.bin", b"1")
    assert store.exists("x/y.bin")
    store.delete("x/y.bin")
    assert not store.exists("x/y.bin")


def test_delete_is_idempotent(store: ArtifactStore) -> None:
    store.put("keep.txt", b"k")
    store.put("gone.txt", b"g")
    store.delete("gone.txt")
    store.delete("gone.txt")
    store.delete("never/was.txt")
    assert [info.key for info in store.list()] == ["keep.txt"]


class _FailingReader(io.RawIOBase):
    """A file object that breaks after its first chunk, like a dropped upload."""

    def __init__(self) -> None:
        self._reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._reads += 1
        if self._reads > 1:
            raise OSError("client went away")
        buffer[:5] = b"parti"
        return 5


def test_failed_put_leaves_the_previous_object_and_no_debris(harness: Harness) -> None:
    harness.store.put("report.csv", b"old,complete")
    with pytest.raises(OSError, match="client went away"):
        harness.store.put("report.csv", _FailingReader())
    assert harness.store.get("report.csv") == b"old,complete"
    assert harness.raw_keys() == [f"{PREFIX}/report.csv"]


class _ObservingReader(io.RawIOBase):
    """A file object that looks at the store while its own upload is still being read."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        self.seen: tuple[list[ObjectInfo], bool] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.seen is not None:
            return 0
        self.seen = (self._store.list(), self._store.exists("d/upload.bin"))
        buffer[:4] = b"data"
        return 4


def test_an_upload_is_invisible_until_it_completes(store: ArtifactStore) -> None:
    reader = _ObservingReader(store)
    store.put("d/upload.bin", reader)  # type: ignore[arg-type]
    assert reader.seen == ([], False)
    assert _keys(store.list()) == ["d/upload.bin"]


# --- listing and deleting by folder --------------------------------------------------------------

LISTED = ["a/b.txt", "a/b/1", "a/b/c/2", "a/bc/3", "z"]


def _keys(infos: list[ObjectInfo]) -> list[str]:
    return [info.key for info in infos]


def test_list_is_recursive_sorted_and_complete(store: ArtifactStore) -> None:
    for index, key in enumerate(reversed(LISTED)):
        store.put(key, b"x" * index)
    infos = store.list()
    assert _keys(infos) == LISTED
    assert [info.size for info in infos] == [4, 3, 2, 1, 0]
    assert all(info.content_type is None for info in infos)


@pytest.mark.parametrize("prefix", ["a/b", "a/b/"])
def test_list_prefix_is_a_folder(store: ArtifactStore, prefix: str) -> None:
    for key in LISTED:
        store.put(key, b"x")
    assert _keys(store.list(prefix)) == ["a/b/1", "a/b/c/2"]


def test_list_of_an_object_or_missing_folder_is_empty(store: ArtifactStore) -> None:
    for key in LISTED:
        store.put(key, b"x")
    assert store.list("z") == []
    assert store.list("nothing/here") == []


def test_delete_prefix_removes_only_that_folder(store: ArtifactStore) -> None:
    for key in LISTED:
        store.put(key, b"x")
    assert store.delete_prefix("a/b") == 2
    assert _keys(store.list()) == ["a/b.txt", "a/bc/3", "z"]
    assert store.delete_prefix("a/b") == 0


def test_delete_prefix_refuses_to_empty_the_store(store: ArtifactStore) -> None:
    store.put("z", b"x")
    for prefix in ["", "/"]:
        with pytest.raises(InvalidInputError, match="never empties the store"):
            store.delete_prefix(prefix)
    assert store.exists("z")


def test_delete_prefix_deletes_in_batches(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "_S3_DELETE_BATCH", 2)  # S3's real batch is 1000 keys
    for index in range(5):
        store.put(f"ds/{index}", b"")
    assert store.delete_prefix("ds") == 5
    assert store.list() == []


# --- keys ----------------------------------------------------------------------------------------

UNSAFE_KEYS = [
    "../x",
    "a/../../x",
    "/etc/passwd",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "a//b",
    "./a",
    "a/.",
    "x" * 1025,
]

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


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("key", UNSAFE_KEYS, ids=lambda key: ascii(key)[:20])
def test_unsafe_keys_are_refused_and_nothing_is_written(
    harness: Harness, key: str, operation: str
) -> None:
    with pytest.raises(InvalidInputError, match="is refused") as refused:
        OPERATIONS[operation](harness.store, key)
    assert refused.value.field == "key"
    assert harness.raw_keys() == []


def test_keys_ending_in_slash_are_refused_as_objects(store: ArtifactStore) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        store.put("a/", b"x")


def test_the_store_sees_only_its_own_prefix(harness: Harness) -> None:
    harness.raw_put("outside/secret.txt", b"secret")
    harness.raw_put(f"{PREFIX}x/sibling.txt", b"spelled like the prefix, outside its folder")
    harness.store.put("mine.txt", b"mine")
    assert _keys(harness.store.list()) == ["mine.txt"]
    assert harness.raw_keys() == [
        "outside/secret.txt",
        f"{PREFIX}/mine.txt",
        f"{PREFIX}x/sibling.txt",
    ]


def test_artifact_key_joins_server_made_parts() -> None:
    key = artifact_key("usr_01J9Z", "datasets", "ds_01J9Z", "train data.csv")
    assert key == "usr_01J9Z/datasets/ds_01J9Z/train data.csv"


@pytest.mark.parametrize(
    "part", ["", ".", "..", "a/b", "/etc", "a\\b", "a\x00b", "a\nb", "a\x7fb"], ids=ascii
)
def test_artifact_key_refuses_unsafe_parts(part: str) -> None:
    with pytest.raises(InvalidInputError, match="is refused") as refused:
        artifact_key("usr_1", part, "file.txt")
    assert refused.value.field == "key"


def test_artifact_key_refuses_no_parts_and_overlong_keys() -> None:
    with pytest.raises(InvalidInputError, match="at least one part"):
        artifact_key()
    with pytest.raises(InvalidInputError, match="longer than 1024"):
        artifact_key("a" * 600, "b" * 600)


# --- signed URLs ---------------------------------------------------------------------------------


def test_signed_url_downloads_the_object(harness: Harness) -> None:
    key = "outputs/job 1/ünï%20code.png"
    data = random.Random(3).randbytes(2048)
    harness.store.put(key, data)
    assert harness.download(harness.store.signed_url(key)) == (200, data)


def test_signed_url_for_one_key_does_not_open_another(harness: Harness) -> None:
    harness.store.put("u/one.txt", b"one")
    harness.store.put("u/two.txt", b"two")
    url = harness.store.signed_url("u/one.txt")
    assert harness.download(url.replace("one.txt", "two.txt"))[0] == 403


def test_signed_url_expires(harness: Harness) -> None:
    harness.store.put("short.txt", b"brief")
    # Expiry counts from a whole second, so 2 s leaves at least 1 s for the first download.
    url = harness.store.signed_url("short.txt", expires_in=2)
    assert harness.download(url) == (200, b"brief")
    time.sleep(3.1)
    assert harness.download(url)[0] == 403


def _lifetime(url: str) -> int:
    query = dict(parse_qsl(urlsplit(url).query))
    if "X-Amz-Expires" in query:
        return int(query["X-Amz-Expires"])
    return int(query["expires"]) - int(time.time())


def test_signed_url_lifetime_defaults_to_the_setting(store: ArtifactStore) -> None:
    store.put("k", b"x")
    assert _lifetime(store.signed_url("k")) in (TTL_SECONDS - 1, TTL_SECONDS)
    assert _lifetime(store.signed_url("k", expires_in=30)) in (29, 30)


@pytest.mark.parametrize("expires_in", [0, -5, 7 * 24 * 3600 + 1])
def test_signed_url_refuses_a_lifetime_out_of_range(store: ArtifactStore, expires_in: int) -> None:
    with pytest.raises(InvalidInputError, match="1 to 604800 seconds") as refused:
        store.signed_url("k", expires_in=expires_in)
    assert refused.value.field == "expires_in"


def test_s3_download_carries_the_content_type(s3_client: BaseClient) -> None:
    harness = _s3_harness(s3_client)
    harness.store.put("img/sample.png", b"\x89PNG")
    harness.store.put("img/model", b"m", content_type="application/onnx")
    types = [
        httpx.get(harness.store.signed_url(key), trust_env=False).headers["content-type"]
        for key in ["img/sample.png", "img/model"]
    ]
    assert types == ["image/png", "application/onnx"]


def test_local_signed_url_quotes_each_segment(local_store: LocalArtifactStore) -> None:
    url = local_store.signed_url("outputs/a b/ü%.png")
    assert url.startswith("http://127.0.0.1:8000/v1/files/outputs/a%20b/%C3%BC%25.png?expires=")


def _signed_parts(store: LocalArtifactStore, key: str) -> tuple[int, str]:
    query = dict(parse_qsl(urlsplit(store.signed_url(key)).query))
    return int(query["expires"]), query["signature"]


def test_verify_signed_url_accepts_until_expiry(local_store: LocalArtifactStore) -> None:
    expires, signature = _signed_parts(local_store, "a/b.txt")
    verify_signed_url("a/b.txt", expires, signature, SECRET_KEY.encode(), now=expires)
    with pytest.raises(PermissionDeniedError, match="download link expired"):
        verify_signed_url("a/b.txt", expires, signature, SECRET_KEY.encode(), now=expires + 1)


def _flip_last(signature: str) -> str:
    return signature[:-1] + ("1" if signature.endswith("0") else "0")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda key, expires, signature, secret: ("a/c.txt", expires, signature, secret),
        lambda key, expires, signature, secret: (key, expires + 3600, signature, secret),
        lambda key, expires, signature, secret: (key, expires, _flip_last(signature), secret),
        lambda key, expires, signature, secret: (key, expires, "é" * 64, secret),
        lambda key, expires, signature, secret: (key, expires, signature, b"another install"),
    ],
    ids=["key", "expiry", "signature", "non-ascii signature", "signing key"],
)
def test_verify_signed_url_refuses_tampering(
    local_store: LocalArtifactStore, tamper: Callable[..., tuple[str, int, str, bytes]]
) -> None:
    expires, signature = _signed_parts(local_store, "a/b.txt")
    forged = tamper("a/b.txt", expires, signature, SECRET_KEY.encode())
    with pytest.raises(PermissionDeniedError, match="download link signature is invalid"):
        verify_signed_url(*forged, now=expires - 60)


# --- local folder specifics ----------------------------------------------------------------------


class _RecordingReader(io.RawIOBase):
    """A large readable stream that records how much each read asked for."""

    def __init__(self, size: int) -> None:
        self._left = size
        self.requests: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.requests.append(size)
        count = self._left if size < 0 else min(size, self._left)
        self._left -= count
        return b"z" * count


def test_local_put_reads_file_objects_in_bounded_chunks(local_store: LocalArtifactStore) -> None:
    reader = _RecordingReader(5 * CHUNK_SIZE)
    local_store.put("big.bin", reader)  # type: ignore[arg-type]
    assert local_store.size("big.bin") == 5 * CHUNK_SIZE
    assert all(0 < size <= CHUNK_SIZE for size in reader.requests)


def test_local_store_refuses_symlinks_that_leave_the_root(
    local_store: LocalArtifactStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    local_store.root.mkdir(parents=True)
    (local_store.root / "link.txt").symlink_to(outside / "secret.txt")
    (local_store.root / "linked").symlink_to(outside, target_is_directory=True)
    for operation in OPERATIONS.values():
        for key in ["link.txt", "linked/secret.txt", "linked/new.txt"]:
            with pytest.raises(InvalidInputError, match="resolves outside the store"):
                operation(local_store, key)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert local_store.list() == []


def test_local_delete_prefix_removes_the_emptied_folders(local_store: LocalArtifactStore) -> None:
    local_store.put("datasets/ds_1/images/0.png", b"0")
    local_store.put("datasets/ds_1/labels.csv", b"l")
    local_store.put("datasets/ds_2/labels.csv", b"l")
    local_store.delete_prefix("datasets/ds_1")
    assert sorted(p.name for p in (local_store.root / "datasets").iterdir()) == ["ds_2"]


# --- configuration -------------------------------------------------------------------------------


def test_make_store_builds_the_local_backend_by_default(tmp_path: Path) -> None:
    store = make_store(_settings(home=tmp_path))
    assert isinstance(store, LocalArtifactStore)
    store.put("a/b.txt", b"x")
    assert (tmp_path / "artifacts" / "a" / "b.txt").read_bytes() == b"x"


def test_make_store_builds_s3_under_the_normalized_prefix(
    s3_server: S3Server, s3_client: BaseClient
) -> None:
    bucket = f"goshen-test-{secrets.token_hex(6)}"
    s3_client.create_bucket(Bucket=bucket)
    settings = _s3_settings(s3_server, storage_backend="s3", s3_bucket=bucket, s3_prefix="/team/a/")
    store = make_store(settings)
    store.put("b.txt", b"x")
    stored = s3_client.get_object(Bucket=bucket, Key="team/a/b.txt")
    assert stored["Body"].read() == b"x"

"""Artifact storage: one interface over a local folder and any S3-compatible bucket.

Keys are made by the server (see `artifact_key`) and are checked again by every operation, so a
key can never reach outside the store's folder or bucket prefix. A prefix given to `list` or
`delete_prefix` names a folder: "a/b" covers "a/b/..." but never "a/bc" or the object "a/b".
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import mimetypes
import os
import re
import shutil
import stat
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from goshen.config import Settings, StorageBackend
from goshen.errors import InvalidInputError, NotFoundError, PermissionDeniedError

CHUNK_SIZE = 1024 * 1024
MAX_KEY_LENGTH = 1024
MAX_URL_TTL_SECONDS = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_TEMP_PREFIX = ".goshen-upload-"
_S3_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys per call
_S3_MISSING = {"NoSuchKey", "NotFound", "404"}


@dataclass(frozen=True)
class ObjectInfo:
    """A stored object. `content_type` is known from `put` only; listings leave it None."""

    key: str
    size: int
    last_modified: datetime
    content_type: str | None = None


def artifact_key(*parts: str) -> str:
    """Join server-made parts (ids, fixed words, chosen file names) into a key; refuse bad parts."""
    if not parts:
        raise InvalidInputError("an artifact key needs at least one part", field="key")
    for part in parts:
        problem = "it contains '/'" if "/" in part else _key_problem(part)
        if problem:
            raise InvalidInputError(f"key part {part[:100]!r} is refused: {problem}", field="key")
    return _check_key("/".join(parts))


def _key_problem(key: str) -> str | None:
    if not key:
        return "it is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"it is longer than {MAX_KEY_LENGTH} characters"
    if key.startswith("/"):
        return "it starts with '/'; keys are relative to the store"
    if "\\" in key:
        return "it contains a backslash"
    if _CONTROL_CHARACTERS.search(key):
        return "it contains NUL or another control character"
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        return "it has an empty, '.' or '..' segment, which could leave the store"
    return None


def _check_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise InvalidInputError saying why."""
    problem = _key_problem(key)
    if problem:
        raise InvalidInputError(f"storage key {key[:100]!r} is refused: {problem}", field="key")
    return key


def _check_folder(prefix: str) -> str:
    """Normalize a folder prefix: "" is the whole store, one trailing "/" is allowed."""
    folder = prefix.removesuffix("/")
    return _check_key(folder) if folder else ""


def _folder_to_delete(prefix: str) -> str:
    folder = _check_folder(prefix)
    if not folder:
        raise InvalidInputError(
            "delete_prefix needs a folder such as 'datasets/ds_...'; it never empties the store",
            field="prefix",
        )
    return folder


def _content_type(key: str, given: str | None) -> str | None:
    return given or mimetypes.guess_type(key)[0]


def _not_found(key: str) -> NotFoundError:
    return NotFoundError(f"no stored object at key {key!r}")


def _chunks(body: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with body:
        while chunk := body.read(chunk_size):
            yield chunk


def _download_signature(key: str, expires: int, signing_key: bytes) -> str:
    # Keys never contain "\n" (control characters are refused), so the message is unambiguous.
    message = f"{key}\n{expires}".encode()
    return hmac.new(signing_key, message, hashlib.sha256).hexdigest()


def verify_signed_url(
    key: str, expires: int, signature: str, signing_key: bytes, now: float | None = None
) -> None:
    """Check a local download link's signature and expiry, raising PermissionDeniedError."""
    expected = _download_signature(key, expires, signing_key)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise PermissionDeniedError("download link signature is invalid")
    if (time.time() if now is None else now) > expires:
        raise PermissionDeniedError("download link expired")


class ArtifactStore(ABC):
    """Objects under server-made keys, with expiring download links."""

    def __init__(self, *, default_ttl_seconds: int = 3600) -> None:
        self.default_ttl_seconds = default_ttl_seconds

    @abstractmethod
    def put(self, key: str, data: bytes | BinaryIO, content_type: str | None = None) -> ObjectInfo:
        """Store bytes or a binary file object (read in chunks) at `key`, replacing any object."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; NotFoundError if there is none."""

    @abstractmethod
    def stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The object in chunks of at most `chunk_size` bytes; NotFoundError at call time."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object in the folder `prefix` and return how many there were."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object in the folder `prefix`, recursively, sorted by key."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes; NotFoundError if there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""

    @abstractmethod
    def signed_url(self, key: str, expires_in: int | None = None) -> str:
        """A download URL for `key` that expires after `expires_in` seconds (default: settings)."""

    def _ttl(self, expires_in: int | None) -> int:
        ttl = self.default_ttl_seconds if expires_in is None else expires_in
        if not 1 <= ttl <= MAX_URL_TTL_SECONDS:
            raise InvalidInputError(
                f"a download link must live 1 to {MAX_URL_TTL_SECONDS} seconds, got {ttl}",
                field="expires_in",
            )
        return ttl


class LocalArtifactStore(ArtifactStore):
    """Objects as files under `root`; downloads go through the API's /v1/files route."""

    def __init__(
        self, root: Path, signing_key: bytes, base_url: str, *, default_ttl_seconds: int = 3600
    ) -> None:
        super().__init__(default_ttl_seconds=default_ttl_seconds)
        if not signing_key:
            raise ValueError("LocalArtifactStore needs a non-empty signing key (GOSHEN_SECRET_KEY)")
        self.root = root.expanduser().resolve()
        self._signing_key = signing_key
        self._base_url = base_url.rstrip("/")

    def _path(self, key: str) -> Path:
        """The file for `key`, refused unless it resolves, symlinks followed, inside the root."""
        path = self.root / _check_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise InvalidInputError(
                f"storage key {key[:100]!r} is refused: it resolves outside the store", field="key"
            )
        return path

    def _folder(self, prefix: str) -> Path:
        folder = _check_folder(prefix)
        return self._path(folder) if folder else self.root

    def _open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise _not_found(key) from None

    def _info(self, path: Path, content_type: str | None = None) -> ObjectInfo:
        status = path.stat()
        key = path.relative_to(self.root).as_posix()
        modified = datetime.fromtimestamp(status.st_mtime, UTC)
        return ObjectInfo(key, status.st_size, modified, content_type)

    def put(self, key: str, data: bytes | BinaryIO, content_type: str | None = None) -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename: readers see the old object or the new, never half.
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                _write(out, data)
                out.flush()
                os.fsync(out.fileno())  # so a crash after the rename cannot leave an empty file
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return self._info(path, _content_type(key, content_type))

    def get(self, key: str) -> bytes:
        with self._open(key) as file:
            return file.read()

    def stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        return _chunks(self._open(key), chunk_size)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(_folder_to_delete(prefix))
        files = list(_files_under(folder))
        for path in files:
            path.unlink(missing_ok=True)
        _remove_empty_folders(folder)
        return len(files)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        infos = [self._info(path) for path in _files_under(self._folder(prefix))]
        return sorted(infos, key=attrgetter("key"))

    def size(self, key: str) -> int:
        try:
            status = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise _not_found(key) from None
        if not stat.S_ISREG(status.st_mode):
            raise _not_found(key)
        return status.st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def signed_url(self, key: str, expires_in: int | None = None) -> str:
        """`{base_url}/v1/files/{key}?expires=..&signature=..`, each key segment percent-quoted.

        The route receives the unquoted key (as frameworks decode paths) and passes it, with
        `expires` and `signature`, to `verify_signed_url`, then serves `stream(key)`.
        """
        self._path(key)  # refuses a bad key, as every operation does
        expires = int(time.time()) + self._ttl(expires_in)
        signature = _download_signature(key, expires, self._signing_key)
        quoted = "/".join(quote(segment, safe="") for segment in key.split("/"))
        return f"{self._base_url}/v1/files/{quoted}?expires={expires}&signature={signature}"


def _write(out: BinaryIO, data: bytes | BinaryIO) -> None:
    if isinstance(data, bytes | bytearray | memoryview):
        out.write(data)
    else:
        shutil.copyfileobj(data, out, CHUNK_SIZE)


def _files_under(folder: Path) -> Iterator[Path]:
    """Stored files below `folder`, skipping in-flight uploads, symlinks and linked folders."""
    for directory, _, names in os.walk(folder):
        for name in names:
            path = Path(directory, name)
            if not name.startswith(_TEMP_PREFIX) and not path.is_symlink():
                yield path


def _remove_empty_folders(folder: Path) -> None:
    """Remove `folder` and the folders below it once they hold nothing, deepest first."""
    for directory, _, _ in os.walk(folder, topdown=False):
        try:
            os.rmdir(directory)
        except OSError as exc:
            # Still holding something (an upload in flight) or already gone: both are fine.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise


class S3ArtifactStore(ArtifactStore):
    """Objects under `prefix` in an S3-compatible bucket; downloads are presigned URLs."""

    def __init__(
        self, bucket: str, prefix: str, client: BaseClient, *, default_ttl_seconds: int = 3600
    ) -> None:
        super().__init__(default_ttl_seconds=default_ttl_seconds)
        folder = prefix.strip("/")
        self.bucket = bucket
        self.prefix = f"{_check_key(folder)}/" if folder else ""
        self._client = client

    def _name(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def _head(self, key: str) -> dict[str, Any]:
        with _missing_as_not_found(key):
            return self._client.head_object(Bucket=self.bucket, Key=self._name(key))

    def _get(self, key: str) -> BinaryIO:
        with _missing_as_not_found(key):
            return self._client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        folder = _check_folder(prefix)
        within = self.prefix + (f"{folder}/" if folder else "")
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=within
        )
        for page in pages:
            yield from page.get("Contents", [])

    def put(self, key: str, data: bytes | BinaryIO, content_type: str | None = None) -> ObjectInfo:
        name = self._name(key)
        content_type = _content_type(key, content_type)
        body = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
        extra = {"ContentType": content_type} if content_type else None
        # upload_fileobj reads in parts and switches to multipart for large bodies.
        self._client.upload_fileobj(body, self.bucket, name, ExtraArgs=extra)
        head = self._head(key)
        modified = _utc(head["LastModified"])
        return ObjectInfo(key, head["ContentLength"], modified, content_type)

    def get(self, key: str) -> bytes:
        with self._get(key) as body:
            return body.read()

    def stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        return _chunks(self._get(key), chunk_size)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def delete_prefix(self, prefix: str) -> int:
        names = [item["Key"] for item in self._objects(_folder_to_delete(prefix))]
        for start in range(0, len(names), _S3_DELETE_BATCH):
            self._delete_batch(names[start : start + _S3_DELETE_BATCH])
        return len(names)

    def _delete_batch(self, names: list[str]) -> None:
        response = self._client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": n} for n in names], "Quiet": True}
        )
        if errors := response.get("Errors"):
            first = errors[0]
            raise RuntimeError(
                f"S3 refused to delete {len(errors)} objects in bucket {self.bucket!r}, "
                f"first {first['Key']!r}: {first.get('Code')} {first.get('Message')}"
            )

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        infos = [self._info(item) for item in self._objects(prefix)]
        return sorted(infos, key=attrgetter("key"))

    def _info(self, item: dict[str, Any]) -> ObjectInfo:
        key = item["Key"].removeprefix(self.prefix)
        return ObjectInfo(key=key, size=item["Size"], last_modified=_utc(item["LastModified"]))

    def size(self, key: str) -> int:
        return self._head(key)["ContentLength"]

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except NotFoundError:
            return False
        return True

    def signed_url(self, key: str, expires_in: int | None = None) -> str:
        return self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._name(key)},
            ExpiresIn=self._ttl(expires_in),
        )


@contextmanager
def _missing_as_not_found(key: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _S3_MISSING:
            raise _not_found(key) from None
        raise


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def make_s3_client(settings: Settings) -> BaseClient:
    """A boto3 S3 client for AWS, MinIO or R2, configured from GOSHEN_S3_* settings."""
    config = Config(
        signature_version="s3v4",
        # MinIO and R2 behind a custom endpoint expect bucket names in the path, not the host.
        s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
        # Newer botocore adds CRC checksums by default, which several S3-compatible servers refuse.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=config,
    )


def make_store(settings: Settings) -> ArtifactStore:
    """The artifact store GOSHEN_STORAGE_BACKEND selects."""
    ttl = settings.signed_url_ttl_seconds
    if settings.storage_backend is StorageBackend.s3:
        assert settings.s3_bucket, "Settings refuses the s3 backend without GOSHEN_S3_BUCKET"
        client = make_s3_client(settings)
        return S3ArtifactStore(
            settings.s3_bucket, settings.s3_prefix, client, default_ttl_seconds=ttl
        )
    return LocalArtifactStore(
        settings.artifacts_dir, settings.signing_key, settings.api_url, default_ttl_seconds=ttl
    )

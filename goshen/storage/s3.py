"""S3ArtifactStore: objects in an S3-compatible bucket (AWS, MinIO, R2), presigned downloads."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, BinaryIO

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from goshen.config import Settings
from goshen.errors import NotFoundError, UnavailableError
from goshen.storage.keys import check_folder, check_key, folder_to_delete
from goshen.storage.store import (
    CHUNK_SIZE,
    ArtifactStore,
    ObjectInfo,
    chunks,
    content_type_for,
    not_found,
)

_S3_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys per call
_S3_MISSING = {"NoSuchKey", "NotFound", "404"}


class S3ArtifactStore(ArtifactStore):
    """Objects under `prefix` in an S3-compatible bucket; downloads are presigned URLs."""

    def __init__(
        self, bucket: str, prefix: str, client: BaseClient, *, default_ttl_seconds: int = 3600
    ) -> None:
        super().__init__(default_ttl_seconds=default_ttl_seconds)
        folder = prefix.strip("/")
        self.bucket = bucket
        self.prefix = f"{check_key(folder)}/" if folder else ""
        self._client = client

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise UnavailableError(
                f"the S3 bucket {self.bucket!r} does not answer ({type(exc).__name__}: {exc})",
                retry_after_seconds=5,
            ) from exc

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    # boto3 ships no types: what it answers is annotated where it is read.

    def _head(self, key: str) -> dict[str, Any]:
        with _missing_as_not_found(key):
            head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=self._name(key))
            return head

    def _get(self, key: str) -> BinaryIO:
        with _missing_as_not_found(key):
            found = self._client.get_object(Bucket=self.bucket, Key=self._name(key))
            body: BinaryIO = found["Body"]
            return body

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        folder = check_folder(prefix)
        within = self.prefix + (f"{folder}/" if folder else "")
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=within
        )
        for page in pages:
            yield from page.get("Contents", [])

    def put(self, key: str, data: bytes | BinaryIO, content_type: str | None = None) -> ObjectInfo:
        name = self._name(key)
        content_type = content_type_for(key, content_type)
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
        return chunks(self._get(key), chunk_size)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def delete_prefix(self, prefix: str) -> int:
        names = [item["Key"] for item in self._objects(folder_to_delete(prefix))]
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
        size: int = self._head(key)["ContentLength"]
        return size

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except NotFoundError:
            return False
        return True

    def signed_url(self, key: str, expires_in: int | None = None) -> str:
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._name(key)},
            ExpiresIn=self._ttl(expires_in),
        )
        return url


@contextmanager
def _missing_as_not_found(key: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _S3_MISSING:
            raise not_found(key) from None
        raise


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def make_s3_client(settings: Settings) -> BaseClient:
    """A boto3 S3 client for AWS, MinIO or R2, configured from GOSHEN_S3_* settings."""
    config = Config(
        signature_version="s3v4",
        # MinIO and R2 behind a custom endpoint expect bucket names in the path, not the host.
        s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
        # A store that is down fails a call within about 3 x GOSHEN_DEPENDENCY_TIMEOUT_SECONDS
        # (3 connects, at most 6 s of backoff between them). The read timeout is per socket read,
        # not per transfer: a large object that keeps arriving is never cut short by it.
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=settings.dependency_timeout_seconds,
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

"""The ArtifactStore interface, the ObjectInfo it answers with, and what its backends share."""

from __future__ import annotations

import mimetypes
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from goshen.errors import InvalidInputError, NotFoundError

CHUNK_SIZE = 1024 * 1024
MAX_URL_TTL_SECONDS = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live


@dataclass(frozen=True)
class ObjectInfo:
    """A stored object. `content_type` is known from `put` only; listings leave it None."""

    key: str
    size: int
    last_modified: datetime
    content_type: str | None = None


def content_type_for(key: str, given: str | None) -> str | None:
    """The content type to record: the one given, else a guess from the key's extension."""
    return given or mimetypes.guess_type(key)[0]


def not_found(key: str) -> NotFoundError:
    """The NotFoundError for a key that holds no object."""
    return NotFoundError(f"no stored object at key {key!r}")


def chunks(body: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    """`body` read in chunks of at most `chunk_size` bytes, then closed."""
    with body:
        while chunk := body.read(chunk_size):
            yield chunk


class ArtifactStore(ABC):
    """Objects under server-made keys, with expiring download links."""

    def __init__(self, *, default_ttl_seconds: int = 3600) -> None:
        self.default_ttl_seconds = default_ttl_seconds

    @abstractmethod
    def check(self) -> None:
        """Raise an error naming the store if it cannot be read and written now (readiness)."""

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

"""LocalArtifactStore: objects as files in a folder, downloaded through the API's /v1/files."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from goshen.errors import InvalidInputError, UnavailableError
from goshen.storage.keys import check_folder, check_key, folder_to_delete
from goshen.storage.signing import download_signature
from goshen.storage.store import (
    CHUNK_SIZE,
    ArtifactStore,
    ObjectInfo,
    chunks,
    content_type_for,
    not_found,
)

_TEMP_PREFIX = ".goshen-upload-"


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

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root, prefix=_TEMP_PREFIX):
                pass
        except OSError as exc:
            raise UnavailableError(
                f"the artifact store folder {self.root} cannot be written ({exc.strerror})",
                retry_after_seconds=5,
            ) from exc

    def _path(self, key: str) -> Path:
        """The file for `key`, refused unless it resolves, symlinks followed, inside the root."""
        path = self.root / check_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise InvalidInputError(
                f"storage key {key[:100]!r} is refused: it resolves outside the store", field="key"
            )
        return path

    def _folder(self, prefix: str) -> Path:
        folder = check_folder(prefix)
        return self._path(folder) if folder else self.root

    def _open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise not_found(key) from None

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
        return self._info(path, content_type_for(key, content_type))

    def get(self, key: str) -> bytes:
        with self._open(key) as file:
            return file.read()

    def stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        return chunks(self._open(key), chunk_size)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(folder_to_delete(prefix))
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
            raise not_found(key) from None
        if not stat.S_ISREG(status.st_mode):
            raise not_found(key)
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
        signature = download_signature(key, expires, self._signing_key)
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

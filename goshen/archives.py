"""Reading zip and tar archives that users upload, without trusting anything they say.

Entries come out as streams, never as files on disk: the caller stores them under names it makes.
Every entry name is checked (no absolute paths, `..`, NUL or backslashes), links and special files
are refused, and bytes are counted as they leave the decompressor, so an archive whose headers lie
about sizes is stopped at the limit all the same.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, Protocol

from goshen.errors import InvalidInputError, PayloadTooLargeError

MAX_ENTRY_NAME_LENGTH = 1024
# Tiny archives legitimately expand a lot (a tar pads every file to 512 bytes); the ratio guard
# starts counting after the first MiB.
RATIO_FREE_BYTES = 1024 * 1024
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_DAMAGED = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    OSError,
    NotImplementedError,
    struct.error,
)
# The end-of-central-directory records and a central directory header of the zip format.
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_HEADER = struct.Struct("<4s6H3L5H2L")


class ArchiveFormat(StrEnum):
    zip = "zip"
    tar = "tar"
    tar_gz = "tar.gz"


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int
    max_uncompressed_bytes: int
    max_compression_ratio: int


class Readable(Protocol):
    def read(self, size: int | None = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ArchiveFile:
    """A regular file in an archive. `name` is checked and relative; it is never used as a path."""

    name: str
    stream: Readable


def archive_format(head: bytes) -> ArchiveFormat | None:
    """The archive format a file's first 512 bytes show, or None."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return ArchiveFormat.zip
    if head.startswith(b"\x1f\x8b"):
        return ArchiveFormat.tar_gz
    if head[257:262] == b"ustar":
        return ArchiveFormat.tar
    return None


def archive_files(
    path: Path, fmt: ArchiveFormat, limits: ArchiveLimits
) -> Generator[ArchiveFile, None, None]:
    """The regular files of an archive in archive order; the first problem refuses the archive.

    Read each stream before asking for the next entry: tar archives are read front to back once.
    """
    budget = _Budget(limits, packed_bytes=path.stat().st_size)
    if fmt is ArchiveFormat.zip:
        files = _zip_files(path, fmt, limits, budget)
    else:
        files = _tar_files(path, fmt, limits, budget)
    try:
        yield from files
    except _DAMAGED as exc:
        raise _damaged(fmt, exc) from None


def check_entry_name(name: str) -> str:
    """The entry's name without `./` or a trailing `/`; refuses names that could leave a folder."""
    shown = repr(name[:200])
    problem = None
    if "\x00" in name:
        problem = "contains a NUL byte"
    elif _CONTROL_CHARACTERS.search(name):
        problem = "contains a control character"
    elif name.startswith(("/", "\\")) or _DRIVE.match(name):
        problem = "is an absolute path"
    elif "\\" in name:
        problem = "contains a backslash"
    elif ".." in name.split("/"):
        problem = "climbs out of the archive with '..'"
    elif len(name) > MAX_ENTRY_NAME_LENGTH:
        problem = f"is longer than {MAX_ENTRY_NAME_LENGTH} characters"
    elif not _is_unicode(name):
        problem = "is not valid UTF-8; rename it"
    if problem:
        raise InvalidInputError(f"archive entry {shown} {problem}", field="file")
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _is_unicode(name: str) -> bool:
    """Whether a name holds only real characters: tarfile decodes bytes that are not UTF-8 to
    lone surrogates, which no file store or JSON document can take."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Budget:
    """Bytes unpacked so far, refused past the uncompressed limit or the compression ratio."""

    def __init__(self, limits: ArchiveLimits, packed_bytes: int) -> None:
        self.used = 0
        self._max_bytes = limits.max_uncompressed_bytes
        self._ratio = limits.max_compression_ratio
        self._packed = packed_bytes
        self._max_by_ratio = max(self._ratio * packed_bytes, RATIO_FREE_BYTES)

    @property
    def remaining(self) -> int:
        return max(min(self._max_bytes, self._max_by_ratio) - self.used, 0)

    def spend(self, count: int) -> None:
        self.used += count
        if self.used > self._max_bytes:
            raise PayloadTooLargeError(
                f"the archive unpacks to more than {self._max_bytes} bytes, over the limit "
                f"GOSHEN_MAX_UNCOMPRESSED_BYTES={self._max_bytes}; upload fewer or smaller files"
            )
        if self.used > self._max_by_ratio:
            raise PayloadTooLargeError(
                f"the archive unpacks to more than {self._ratio} times its {self._packed} bytes, "
                f"over the limit GOSHEN_MAX_COMPRESSION_RATIO={self._ratio}; "
                "it looks like a decompression bomb"
            )


class _RawReader(Protocol):
    """An open file, a zip or tar member, or a gzip stream: what _EntryStream reads from."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> object: ...


class _EntryStream:
    """A reader that reports a damaged archive as such and, given a budget, charges it each byte."""

    def __init__(self, raw: _RawReader, fmt: ArchiveFormat, budget: _Budget | None = None) -> None:
        self._raw = raw
        self._fmt = fmt
        self._budget = budget

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            size = -1
        if self._budget is not None:
            # One byte past what is left: enough to see the limit crossed, never a huge read.
            allowed = self._budget.remaining + 1
            size = allowed if size < 0 else min(size, allowed)
        try:
            data = self._raw.read(size)
        except _DAMAGED as exc:
            raise _damaged(self._fmt, exc) from None
        if self._budget is not None:
            self._budget.spend(len(data))
        return data

    def close(self) -> None:
        self._raw.close()


def _zip_files(
    path: Path, fmt: ArchiveFormat, limits: ArchiveLimits, budget: _Budget
) -> Iterator[ArchiveFile]:
    with path.open("rb") as file:
        if _zip_entry_count(file, stop_after=limits.max_entries) > limits.max_entries:
            raise _too_many_entries(limits)
        try:
            archive = zipfile.ZipFile(file)
        except UnicodeDecodeError as exc:
            raise _name_not_utf8(exc) from None
        with archive:
            seen: set[str] = set()
            for info in archive.infolist():
                name = _unique(check_entry_name(info.orig_filename), seen)
                _check_zip_entry(info, name)
                if info.is_dir() or not name:
                    continue
                try:
                    raw = archive.open(info)  # reads the entry's local header and its name
                except UnicodeDecodeError as exc:
                    raise _name_not_utf8(exc) from None
                with raw:
                    yield ArchiveFile(name, _EntryStream(raw, fmt, budget))


def _check_zip_entry(info: zipfile.ZipInfo, name: str) -> None:
    mode = info.external_attr >> 16
    problem = None
    if info.flag_bits & 0x1:
        problem = "is encrypted; upload an archive without a password"
    elif stat.S_ISLNK(mode):
        problem = "is a symbolic link; archives may hold only files and folders"
    elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        problem = "is a device or other special file; archives may hold only files and folders"
    if problem:
        raise InvalidInputError(f"archive entry {name[:200]!r} {problem}", field="file")


def _zip_entry_count(file: BinaryIO, stop_after: int) -> int:
    """Entries in the central directory, counted without parsing them, up to `stop_after` + 1.

    zipfile makes an object per entry before anyone can count them, so a small archive of empty
    entries could take gigabytes of memory; this walk stops as soon as the limit is passed.
    """
    start, size = _zip_central_directory(file)
    count = offset = 0
    while offset < size and count <= stop_after:
        file.seek(start + offset)
        header = file.read(_CENTRAL_HEADER.size)
        if len(header) < _CENTRAL_HEADER.size or not header.startswith(b"PK\x01\x02"):
            break  # zipfile reports the damage with its own words
        name_length, extra_length, comment_length = _CENTRAL_HEADER.unpack(header)[10:13]
        offset += _CENTRAL_HEADER.size + name_length + extra_length + comment_length
        count += 1
    return count


def _zip_central_directory(file: BinaryIO) -> tuple[int, int]:
    """Where the central directory starts and how many bytes it takes, from the end records."""
    end = file.seek(0, os.SEEK_END)
    tail_start = max(0, end - _EOCD.size - 0xFFFF)  # the record, then a comment of <= 64 KiB
    file.seek(tail_start)
    tail = file.read()
    found = tail.rfind(b"PK\x05\x06")
    if found < 0 or len(tail) - found < _EOCD.size:
        raise zipfile.BadZipFile("File is not a zip file")
    record = tail_start + found
    size = _EOCD.unpack_from(tail, found)[5]
    locator = record - _EOCD64_LOCATOR.size
    if locator >= _EOCD64.size:
        file.seek(locator)
        if file.read(4) == b"PK\x06\x07":
            record = locator - _EOCD64.size
            file.seek(record)
            size = _EOCD64.unpack(file.read(_EOCD64.size))[8]
    if size > record:
        raise zipfile.BadZipFile("the central directory is larger than the archive")
    return record - size, size


def _tar_files(
    path: Path, fmt: ArchiveFormat, limits: ArchiveLimits, budget: _Budget
) -> Iterator[ArchiveFile]:
    with path.open("rb") as file:
        raw: _RawReader = gzip.GzipFile(fileobj=file) if fmt is ArchiveFormat.tar_gz else file
        # Counting the whole tar stream covers headers and the files tarfile skips over, too.
        stream = _EntryStream(raw, fmt, budget)
        with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]  # typeshed asks any fileobj for write, tell and seek; "r|" only reads
            seen: set[str] = set()
            for count, member in enumerate(archive, start=1):
                if count > limits.max_entries:
                    raise _too_many_entries(limits)
                name = _unique(check_entry_name(member.name), seen)
                _check_tar_member(member, name)
                if member.isdir() or not name:
                    continue
                data = archive.extractfile(member)
                assert data is not None, "regular members always have data"
                yield ArchiveFile(name, _EntryStream(data, fmt))


def _check_tar_member(member: tarfile.TarInfo, name: str) -> None:
    problem = None
    if member.issym() or member.islnk():
        problem = f"is a link to {member.linkname[:200]!r}"
    elif member.issparse():
        problem = "is a sparse file"
    elif not (member.isreg() or member.isdir()):
        problem = "is a device, FIFO or other special file"
    if problem:
        raise InvalidInputError(
            f"archive entry {name[:200]!r} {problem}; archives may hold only files and folders",
            field="file",
        )


def _unique(name: str, seen: set[str]) -> str:
    if name and name in seen:
        raise InvalidInputError(f"archive entry {name[:200]!r} appears twice", field="file")
    seen.add(name)
    return name


def _too_many_entries(limits: ArchiveLimits) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the archive has more than {limits.max_entries} entries, over the limit "
        f"GOSHEN_MAX_ARCHIVE_ENTRIES={limits.max_entries}; upload fewer files"
    )


def _name_not_utf8(exc: UnicodeDecodeError) -> InvalidInputError:
    return InvalidInputError(
        f"an entry name in the zip archive is marked UTF-8 but is not ({exc.reason} at byte "
        f"{exc.start}); rename the file and zip the files again",
        field="file",
    )


def _damaged(fmt: ArchiveFormat, exc: BaseException) -> InvalidInputError:
    detail = str(exc)[:300] or type(exc).__name__
    return InvalidInputError(
        f"the file is not a readable {fmt} archive ({detail}); upload it again", field="file"
    )

"""Formats told by their first bytes: uploads (image archives, Parquet, CSV) and images."""

from __future__ import annotations

import codecs
import re
from enum import StrEnum
from pathlib import Path

from goshen.archives import archive_format
from goshen.db.models import DatasetKind
from goshen.errors import InvalidInputError

_IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}
_SNIFF_BYTES = 64 * 1024
# Bytes no text holds: control characters other than tab, line feed, vertical tab, form feed, CR.
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1f]")


class UploadFormat(StrEnum):
    zip = "zip"
    tar = "tar"
    tar_gz = "tar.gz"
    parquet = "parquet"
    csv = "csv"

    @property
    def kind(self) -> DatasetKind:
        tables = (UploadFormat.parquet, UploadFormat.csv)
        return DatasetKind.tabular if self in tables else DatasetKind.images


def detect_format(path: Path) -> UploadFormat:
    """The upload's format from its first bytes; refuses anything else."""
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES)
    if not head:
        raise InvalidInputError("the file is empty", field="file")
    archive = archive_format(head)
    if archive is not None:
        return UploadFormat(archive.value)
    if head.startswith(b"PAR1"):
        return UploadFormat.parquet
    binary = _BINARY_BYTES.search(head)
    if binary is None and _is_utf8(head):
        return UploadFormat.csv
    found = ""
    if image_format(head):
        found = f"; it looks like a {image_format(head)} image"
    elif binary is not None:
        found = f"; its byte 0x{binary[0][0]:02x} at offset {binary.start()} is not text"
    raise InvalidInputError(
        f"the file is not a .zip, .tar or .tar.gz archive of images, a CSV or a Parquet table "
        f"(checked by its first bytes, not its name){found}",
        field="file",
    )


def image_format(head: bytes) -> str | None:
    """PNG, JPEG, BMP or GIF by magic bytes, or None."""
    return next((fmt for magic, fmt in _IMAGE_MAGIC.items() if head.startswith(magic)), None)


def _is_utf8(head: bytes) -> bool:
    # The sniffed bytes may end inside a character; only a real error counts.
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True

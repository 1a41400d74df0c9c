"""Image archives: every image checked, repacked under server-made names, labelled, counted."""

from __future__ import annotations

import shutil
import struct
import tarfile
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from goshen.archives import ArchiveFile, ArchiveFormat, archive_files
from goshen.db.models import DatasetKind
from goshen.errors import InvalidInputError, PayloadTooLargeError
from goshen.storage import ArtifactStore
from goshen.uploads.formats import UploadFormat, image_format
from goshen.uploads.labels import LABELS_CSV, image_labels
from goshen.uploads.limits import UploadLimits
from goshen.uploads.manifest import IMAGES, MANIFEST_VERSION, StoredDataset, put_manifest

IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif"}
MAX_LABELS_CSV_BYTES = 32 * 1024 * 1024
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
# An image archive's schema: the columns of its manifest's entries.
_IMAGE_COLUMNS = {
    "source": "String",
    "label": "String",
    "format": "String",
    "width": "Int64",
    "height": "Int64",
}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def check_image(path: Path, name: str, max_pixels: int) -> ImageInfo:
    """Check that a file is an allowed image within the pixel limit, then decode it once."""
    shown = repr(name[:200])
    with path.open("rb") as file:
        fmt = image_format(file.read(16))
        if fmt is None:
            raise InvalidInputError(
                f"archive entry {shown} is not a PNG, JPEG, BMP or GIF image "
                "(checked by its first bytes, not its name)",
                field="file",
            )
        file.seek(0)
        try:
            # `formats` keeps PIL to the allowed decoders; opening reads the header only.
            with Image.open(file, formats=[fmt]) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise PayloadTooLargeError(
                        f"image {shown} has {width}x{height} = {width * height} pixels, over the "
                        f"limit GOSHEN_MAX_IMAGE_PIXELS={max_pixels}"
                    )
                image.load()  # catches truncated and corrupt images now, not at training time
        except Image.DecompressionBombError as exc:
            raise PayloadTooLargeError(
                f"image {shown} is too large to open ({exc}); the limit is "
                f"GOSHEN_MAX_IMAGE_PIXELS={max_pixels}"
            ) from None
        except UnidentifiedImageError:
            # Its message names our scratch file; the user's entry name says more.
            raise InvalidInputError(
                f"image {shown} starts like a {fmt} file but is not a readable {fmt} image",
                field="file",
            ) from None
        except _DECODE_ERRORS as exc:
            raise InvalidInputError(
                f"image {shown} is a damaged {fmt} file ({str(exc)[:200]})", field="file"
            ) from None
    return ImageInfo(fmt, width, height)


def store_images(
    path: Path,
    fmt: UploadFormat,
    store: ArtifactStore,
    prefix: str,
    limits: UploadLimits,
    workdir: Path,
) -> StoredDataset:
    """Check an image archive, repack its images under `prefix` and say what was kept."""
    entries: list[dict[str, Any]] = []
    labels_files: dict[str, bytes] = {}
    packed_path = workdir / IMAGES
    files = archive_files(path, ArchiveFormat(fmt.value), limits.archive)
    with closing(files), tarfile.open(packed_path, "w") as packed:
        for entry in files:
            if _skipped(entry.name):
                continue
            if entry.name.rsplit("/", 1)[-1] == LABELS_CSV and entry.name.count("/") <= 1:
                labels_files[entry.name] = _read_labels_file(entry)
                continue
            entries.append(_pack_image(entry, len(entries), packed, workdir, limits))
    if not entries:
        raise InvalidInputError("the archive holds no PNG, JPEG, BMP or GIF images", field="file")
    labels, label_source = image_labels([e["source"] for e in entries], labels_files)
    for kept, label in zip(entries, labels, strict=True):
        kept["label"] = label
    manifest = {
        "version": MANIFEST_VERSION,
        "kind": DatasetKind.images.value,
        "format": fmt.value,
        "images": IMAGES,
        "label_source": label_source,
        "entries": entries,
    }
    with packed_path.open("rb") as file:
        stored = store.put(f"{prefix}/{IMAGES}", file, content_type="application/x-tar")
    size = stored.size + put_manifest(store, prefix, manifest)
    return StoredDataset(
        DatasetKind.images,
        fmt,
        size,
        len(entries),
        {"columns": _IMAGE_COLUMNS},
        _image_stats(entries, label_source),
    )


def _skipped(name: str) -> bool:
    """Whether an entry is operating-system clutter: hidden files and macOS resource forks."""
    parts = name.split("/")
    return parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


def _read_labels_file(entry: ArchiveFile) -> bytes:
    data = entry.stream.read(MAX_LABELS_CSV_BYTES + 1)
    if len(data) > MAX_LABELS_CSV_BYTES:
        raise PayloadTooLargeError(
            f"{entry.name[:200]!r} is larger than {MAX_LABELS_CSV_BYTES} bytes, the most a "
            "labels file may hold"
        )
    return data


def _pack_image(
    entry: ArchiveFile, index: int, packed: tarfile.TarFile, workdir: Path, limits: UploadLimits
) -> dict[str, Any]:
    """Check one image and add it to the packed archive under a server-made name."""
    scratch = workdir / "entry"
    with scratch.open("wb") as out:
        shutil.copyfileobj(entry.stream, out)
    info = check_image(scratch, entry.name, limits.max_image_pixels)
    stored_name = f"{index:06d}{IMAGE_FORMATS[info.format]}"
    member = tarfile.TarInfo(stored_name)
    member.size = scratch.stat().st_size
    member.mode = 0o644
    with scratch.open("rb") as file:
        packed.addfile(member, file)
    return {
        "file": stored_name,
        "source": entry.name,
        "format": info.format,
        "width": info.width,
        "height": info.height,
    }


def _image_stats(entries: list[dict[str, Any]], label_source: str | None) -> dict[str, Any]:
    widths = [entry["width"] for entry in entries]
    heights = [entry["height"] for entry in entries]
    counts = Counter(entry["label"] for entry in entries if entry["label"] is not None)
    return {
        "images": len(entries),
        "formats": dict(Counter(entry["format"] for entry in entries)),
        "width": {"min": min(widths), "max": max(widths)},
        "height": {"min": min(heights), "max": max(heights)},
        "label_source": label_source,
        "class_counts": dict(sorted(counts.items())),
    }

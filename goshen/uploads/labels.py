"""An image archive's labels: from its labels.csv, else from the class folders images sit in."""

from __future__ import annotations

import csv
import io
import re

from goshen.errors import InvalidInputError

LABELS_CSV = "labels.csv"
# The csv module's own limit on a field, left at its default: no file name or label is longer.
MAX_LABELS_FIELD_CHARS = 128 * 1024
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def image_labels(
    sources: list[str], labels_files: dict[str, bytes]
) -> tuple[list[str | None], str | None]:
    """Each image's label and where the labels came from: labels.csv, folders, or nowhere."""
    root = _wrapping_folder([*sources, *labels_files])
    relative = [source.removeprefix(root) for source in sources]
    stray = sorted(name for name in labels_files if name != root + LABELS_CSV)
    if stray:
        raise InvalidInputError(
            f"{stray[0][:200]!r}: labels.csv must sit at the top of the archive", field="file"
        )
    if labels_files:
        return _labels_from_csv(relative, labels_files[root + LABELS_CSV]), LABELS_CSV
    in_folders = ["/" in name for name in relative]
    if all(in_folders):
        return [name.split("/", 1)[0] for name in relative], "folders"
    if any(in_folders):
        loose = relative[in_folders.index(False)]
        raise InvalidInputError(
            f"image {loose[:200]!r} is at the top of the archive while others sit in class "
            "folders; put every image in a class folder, or add a labels.csv",
            field="file",
        )
    return [None] * len(relative), None


def _wrapping_folder(names: list[str]) -> str:
    """The one folder every entry sits in (as zipping a folder makes) with its '/', or ''."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return tops.pop() + "/"
    return ""


def _labels_from_csv(images: list[str], data: bytes) -> list[str | None]:
    table = _parse_labels_csv(data)
    known = set(images)
    missing = [name for name in table if name not in known]
    if missing:
        raise InvalidInputError(
            f"labels.csv names {missing[0][:200]!r}, which is not an image in the archive"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            field="file",
        )
    unlabeled = [name for name in images if name not in table]
    if unlabeled:
        raise InvalidInputError(
            f"image {unlabeled[0][:200]!r} has no row in labels.csv"
            + (f" (and {len(unlabeled) - 1} more)" if len(unlabeled) > 1 else ""),
            field="file",
        )
    return [table[name] for name in images]


def _parse_labels_csv(data: bytes) -> dict[str, str]:
    """labels.csv as {file: label}; needs a header with `file` and `label` columns."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InvalidInputError(
            f"labels.csv contains a NUL byte (at offset {nul}); save it as UTF-8 text", field="file"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"labels.csv is not UTF-8 text (byte {exc.start}); save it as UTF-8", field="file"
        ) from None
    try:
        return _labels_table(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        # In its default, lenient mode the csv module refuses only fields over its limit.
        raise InvalidInputError(
            f"labels.csv could not be read ({exc}); a file name or label may hold at most "
            f"{MAX_LABELS_FIELD_CHARS} characters",
            field="file",
        ) from None


def _labels_table(rows: csv.DictReader[str]) -> dict[str, str]:
    if rows.fieldnames is None or not {"file", "label"} <= set(rows.fieldnames):
        raise InvalidInputError(
            "labels.csv needs a header row with the columns file,label", field="file"
        )
    table: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        name = (row["file"] or "").strip().removeprefix("./")
        label = (row["label"] or "").strip()
        if not name or not label:
            raise InvalidInputError(
                f"labels.csv line {line} needs a file and a label", field="file"
            )
        if _CONTROL_CHARACTERS.search(label):
            raise InvalidInputError(
                f"labels.csv line {line}: label {label[:200]!r} contains a control character",
                field="file",
            )
        if name in table:
            raise InvalidInputError(f"labels.csv names {name[:200]!r} twice", field="file")
        table[name] = label
    return table

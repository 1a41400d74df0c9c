"""Artifact keys: made from server-made parts, and checked to stay inside the store."""

from __future__ import annotations

import re

from goshen.errors import InvalidInputError

MAX_KEY_LENGTH = 1024
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def artifact_key(*parts: str) -> str:
    """Join server-made parts (ids, fixed words, chosen file names) into a key; refuse bad parts."""
    if not parts:
        raise InvalidInputError("an artifact key needs at least one part", field="key")
    for part in parts:
        problem = "it contains '/'" if "/" in part else _key_problem(part)
        if problem:
            raise InvalidInputError(f"key part {part[:100]!r} is refused: {problem}", field="key")
    return check_key("/".join(parts))


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


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise InvalidInputError saying why."""
    problem = _key_problem(key)
    if problem:
        raise InvalidInputError(f"storage key {key[:100]!r} is refused: {problem}", field="key")
    return key


def check_folder(prefix: str) -> str:
    """Normalize a folder prefix: "" is the whole store, one trailing "/" is allowed."""
    folder = prefix.removesuffix("/")
    return check_key(folder) if folder else ""


def folder_to_delete(prefix: str) -> str:
    """`prefix` as a folder delete_prefix may empty; never the whole store."""
    folder = check_folder(prefix)
    if not folder:
        raise InvalidInputError(
            "delete_prefix needs a folder such as 'datasets/ds_...'; it never empties the store",
            field="prefix",
        )
    return folder

"""Artifact keys: every operation of both backends refuses an unsafe key and writes nothing, a
store sees only its own prefix, and artifact_key joins only safe server-made parts."""

from __future__ import annotations

import pytest

from goshen.errors import InvalidInputError
from goshen.storage import ArtifactStore, artifact_key
from tests.goshen.storage.harness import OPERATIONS, PREFIX, Harness, keys_of

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
    assert keys_of(harness.store.list()) == ["mine.txt"]
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

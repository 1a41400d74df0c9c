"""/v1/datasets with malformed content: each upload is a 422 problem+json that says what is wrong,
on SQLite and PostgreSQL, and leaves no row and no stored object."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen.config import Settings
from serving.app import create_app
from tests.fixtures.accounts import Account
from tests.goshen.test_uploads_malformed import tar_with_raw_names, zip_with_bad_utf8_name
from tests.serving.test_datasets import PROBLEM, nothing_kept, png, upload, zip_of


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The API with room for a 10 MB upload and tables of many rows."""
    limits = {"max_upload_bytes": 16 * 1024 * 1024, "max_table_rows": 100_000}
    limited = Settings(**{**settings.model_dump(), "_env_file": None, **limits})
    with TestClient(create_app(limited)) as test_client:
        yield test_client


def parquet_of(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


MANY_ROWS = b"a,t\n" + b"1,x\n" * 20_000  # past the 64 KiB that format detection reads
CASES: dict[str, tuple[bytes, dict[str, str], str]] = {
    "csv-header-over-128-KiB": (b"a" * 200_000 + b"\n1\n", {}, "MAX_CSV_HEADER_BYTES=131072"),
    "10-MB-of-0x01": (b"\x01" * 10_000_000, {}, "its byte 0x01 at offset 0 is not text"),
    "csv-header-not-utf8": (b"a" * 70_000 + b"\xff,b\n1,2\n", {}, "header is not UTF-8"),
    "csv-column-name-nul": (b"a" * 70_000 + b"\x00,b\n1,2\n", {}, "the control character '\\x00'"),
    "csv-target-nul": (MANY_ROWS + b"1,x\x00y\n", {"target": "t"}, "a value with a NUL byte"),
    "parquet-not-parquet": (
        b"PAR1" + bytes(8) + b"PAR1",
        {},
        "the Parquet file is damaged, not Parquet",
    ),
    "parquet-unknown-time-zone": (
        parquet_of(pa.table({"t": pa.array([1], pa.timestamp("s", "Mars/Olympus"))})),
        {},
        "unknown time zone 'Mars/Olympus'",
    ),
    "parquet-column-name-nul": (
        parquet_of(pa.table({"a\x00b": [1, 2]})),
        {},
        "contains the control character '\\x00'",
    ),
    "labels-huge-field": (
        zip_of({"a.png": png(), "labels.csv": b"file,label\na.png," + b"x" * 200_000 + b"\n"}),
        {},
        "at most 131072 characters",
    ),
    "labels-nul": (
        zip_of({"a.png": png(), "labels.csv": b"file,label\na.png,c\x00t\n"}),
        {},
        "labels.csv contains a NUL byte",
    ),
    "labels-not-utf8": (
        zip_of({"a.png": png(), "labels.csv": b"file,label\na.png,\xff\n"}),
        {},
        "labels.csv is not UTF-8 text",
    ),
    "png-magic-over-a-jpeg": (
        zip_of({"a.png": b"\x89PNG\r\n\x1a\n" + png(fmt="JPEG")}),
        {},
        "starts like a PNG file but is not a readable PNG image",
    ),
    "zip-name-flagged-utf8-but-not": (zip_with_bad_utf8_name(), {}, "is marked UTF-8 but is not"),
    "tar-folder-not-utf8": (
        tar_with_raw_names([b"c\xffat/a.png", b"dog/b.png"]),
        {},
        "is not valid UTF-8",
    ),
}


@pytest.mark.parametrize(("data", "fields", "detail"), CASES.values(), ids=CASES.keys())
def test_malformed_uploads_are_422_saying_what_to_fix(
    client: TestClient,
    developer: Account,
    sessions: sessionmaker[Session],
    data: bytes,
    fields: dict[str, str],
    detail: str,
) -> None:
    response = upload(client, developer, data, **fields)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert detail in response.json()["detail"]
    assert nothing_kept(client, sessions)

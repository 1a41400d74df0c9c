"""/v1/datasets: uploads checked against the limits, stored under server-made names, owner-only.

This module's API runs with small upload limits, so every limit can be crossed with a small file.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from goshen.client import GoshenClient
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Dataset, DatasetStatus, TrainingJob, TrainingStatus
from serving.app import create_app
from serving.routes import datasets as dataset_routes
from tests.fixtures.accounts import Account

PROBLEM = "application/problem+json"
LIMITS = {
    "max_upload_bytes": 256 * 1024,
    "max_archive_entries": 20,
    "max_uncompressed_bytes": 4 * 1024 * 1024,
    "max_image_pixels": 64 * 64,
    "max_table_rows": 100,
}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    limited = Settings(**{**settings.model_dump(), "_env_file": None, **LIMITS})
    with TestClient(create_app(limited)) as test_client:
        yield test_client


def png(size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 200).save(buffer, format=fmt)
    return buffer.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_of(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            archive.addfile(link)
    return buffer.getvalue()


def parquet_of(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def upload(client: TestClient, account: Any, data: bytes, filename: str = "data", **fields: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/datasets",
        files={"file": (filename, data, "application/octet-stream")},
        data={"name": "my data", **fields},
        headers=account.headers,
    )


def nothing_kept(client: TestClient, sessions: sessionmaker[Session]) -> bool:
    with session_scope(sessions) as session:
        rows = session.scalar(select(func.count()).select_from(Dataset))
    return rows == 0 and client.app.state.api.store.list("datasets") == []  # type: ignore[attr-defined]  # untyped app


def test_image_archive_lifecycle(client: TestClient, developer: Account) -> None:
    labels = b"file,label\na.png,cat\nb.png,dog\nc.jpg,cat\n"
    images = {"a.png": png(), "b.png": png(), "c.jpg": png(fmt="JPEG")}
    archive = zip_of({**images, "labels.csv": labels})
    created = upload(client, developer, archive, filename="../../etc/cats.zip")
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert dataset["kind"] == "images" and dataset["status"] == "uploaded"
    assert dataset["file_count"] == 3 and dataset["size_bytes"] > 0
    assert dataset["stats"]["class_counts"] == {"cat": 2, "dog": 1}
    assert "label" in dataset["schema"]["columns"]
    assert not {"storage_prefix", "user_id", "schema_"} & set(dataset)

    store = client.app.state.api.store  # type: ignore[attr-defined]  # untyped app
    keys = [info.key for info in store.list("datasets")]
    prefix = f"datasets/{developer.user_id}/{dataset['id']}/"
    assert keys == [prefix + "images.tar", prefix + "manifest.json"]  # no user file names

    listed = client.get("/v1/datasets", headers=developer.headers).json()
    assert [d["id"] for d in listed["data"]] == [dataset["id"]]
    fetched = client.get(f"/v1/datasets/{dataset['id']}", headers=developer.headers)
    assert fetched.json() == dataset

    deleted = client.delete(f"/v1/datasets/{dataset['id']}", headers=developer.headers)
    assert deleted.status_code == 200 and deleted.json()["id"] == dataset["id"]
    assert store.list("datasets") == []
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=developer.headers).status_code == 404
    again = client.delete(f"/v1/datasets/{dataset['id']}", headers=developer.headers)
    assert again.status_code == 404


@pytest.mark.parametrize(
    ("data", "kind", "file_count"),
    [
        (tar_of({"root/0/a.png": png(), "root/1/b.bmp": png(fmt="BMP")}), "images", 2),
        (b"x,y,label\n1,0.5,a\n2,1.5,b\n", "tabular", 1),
        (parquet_of(pl.DataFrame({"x": [1, 2, 3], "label": ["a", "b", "a"]})), "tabular", 1),
    ],
    ids=["tar.gz", "csv", "parquet"],
)
def test_formats_and_kind_are_told_by_content(
    client: TestClient, developer, data, kind, file_count
) -> None:
    created = upload(client, developer, data, filename="misleading.zip")
    assert created.status_code == 201, created.text
    assert created.json()["kind"] == kind and created.json()["file_count"] == file_count


def test_a_table_with_a_target_is_described(client: TestClient, developer: Account) -> None:
    data = b"x,y,label\n1,0.5,a\n2,,b\n3,2.5,a\n"
    created = upload(client, developer, data, kind="tabular", target="label")
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert dataset["schema"] == {"columns": {"x": "Int64", "y": "Float64", "label": "String"}}
    assert dataset["stats"]["rows"] == 3 and dataset["stats"]["nulls"]["y"] == 1
    assert dataset["stats"]["numeric"]["x"] == {"min": 1, "max": 3, "mean": 2.0}
    assert dataset["stats"]["target"]["distribution"] == {"a": 2, "b": 1}


@pytest.mark.parametrize(
    ("data", "status", "detail"),
    [
        (zip_of({"../evil.png": png()}), 422, "climbs out of the archive with '..'"),
        (zip_of({"/etc/evil.png": png()}), 422, "is an absolute path"),
        (tar_of({"a.png": png()}, links={"b.png": "/etc/passwd"}), 422, "is a link"),
        (zip_of({"a.png": bytes(2 * 1024 * 1024)}), 413, "GOSHEN_MAX_COMPRESSION_RATIO=100"),
        (zip_of({"a.png": b"I am text"}), 422, "is not a PNG, JPEG, BMP or GIF image"),
        (zip_of({f"{i}.png": png() for i in range(21)}), 413, "GOSHEN_MAX_ARCHIVE_ENTRIES=20"),
        (zip_of({"big.png": png((65, 64))}), 413, "GOSHEN_MAX_IMAGE_PIXELS=4096"),
        (secrets.token_bytes(300 * 1024), 413, "GOSHEN_MAX_UPLOAD_BYTES=262144"),
        (b"a\n" + b"1\n" * 101, 413, "GOSHEN_MAX_TABLE_ROWS=100"),
        (zip_of({"a.png": png(), "labels.csv": b"file,label\nb.png,x\n"}), 422, "'b.png'"),
        (png(), 422, "not a .zip, .tar or .tar.gz archive"),
    ],
    ids=[
        "traversal",
        "absolute",
        "symlink",
        "bomb",
        "magic",
        "entries",
        "pixels",
        "size",
        "rows",
        "labels",
        "bare-image",
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    client: TestClient, developer, sessions, data, status, detail
) -> None:
    response = upload(client, developer, data)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert detail in response.json()["detail"]
    assert nothing_kept(client, sessions)


CSV_PART = {"file": ("t.csv", b"a,b\n1,2\n")}


@pytest.mark.parametrize(
    ("fields", "files", "field"),
    [
        ({}, CSV_PART, "name"),
        ({"name": "x", "kind": "video"}, CSV_PART, "kind"),
        ({"name": "x", "owner": "usr_1"}, CSV_PART, "owner"),
        ({"name": "x", "kind": "images"}, CSV_PART, "kind"),  # the file is a CSV
        ({}, {"name": (None, "x")}, "file"),  # multipart without a file part
        ({"name": "x"}, {"upload": ("t.csv", b"a\n1\n")}, "upload"),
    ],
)
def test_bad_form_fields_are_422_naming_the_field(
    client: TestClient, developer, sessions, fields, files, field
) -> None:
    response = client.post("/v1/datasets", data=fields, files=files, headers=developer.headers)
    assert response.status_code == 422, response.text
    assert field in {error["field"] for error in response.json()["errors"]}
    assert nothing_kept(client, sessions)


def test_a_body_that_is_not_multipart_is_415(client: TestClient, developer: Account) -> None:
    response = client.post("/v1/datasets", json={"name": "x"}, headers=developer.headers)
    assert response.status_code == 415 and response.headers["content-type"] == PROBLEM


def _post_in_chunks(
    app: FastAPI, account: Any, body: bytes, headers: dict[str, str]
) -> tuple[int, int, int]:
    """POST `body` to the app in 64 KiB chunks: (status, chunks the app read, chunks in all)."""
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    read = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read == len(chunks):
            return {"type": "http.disconnect"}
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    all_headers = {**headers, **account.headers}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/datasets",
        "raw_path": b"/v1/datasets",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in all_headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    anyio.run(app, scope, receive, send)
    return status, read, len(chunks)


def test_an_oversized_body_is_refused_before_it_is_read_to_the_end(
    client: TestClient, developer, sessions
) -> None:
    boundary = "goshen-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        ).encode()
        + bytes(2 * 1024 * 1024)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    multipart = {"content-type": f"multipart/form-data; boundary={boundary}"}
    # Without a Content-Length, the upload is refused once its bytes pass the limit.
    status, read, total = _post_in_chunks(client.app, developer, body, multipart)  # type: ignore[arg-type]
    assert status == 413 and read < total / 4
    # With one announcing too much, it is refused before any of it is read.
    announced = {**multipart, "content-length": str(len(body))}
    status, read, _ = _post_in_chunks(client.app, developer, body, announced)  # type: ignore[arg-type]
    assert status == 413 and read == 0
    assert nothing_kept(client, sessions)


def test_lists_are_paginated_newest_first(client: TestClient, developer: Account) -> None:
    ids = [upload(client, developer, b"a\n1\n").json()["id"] for _ in range(3)]
    first = client.get("/v1/datasets?limit=2", headers=developer.headers).json()
    assert [d["id"] for d in first["data"]] == ids[:0:-1] and first["has_more"]
    cursor = first["next_cursor"]
    second = client.get(f"/v1/datasets?limit=2&cursor={cursor}", headers=developer.headers).json()
    assert [d["id"] for d in second["data"]] == ids[:1] and not second["has_more"]


def test_another_users_dataset_is_not_found(
    client: TestClient, developer: Account, make_account: Callable[..., Account]
) -> None:
    other = make_account()
    dataset_id = upload(client, other, b"a\n1\n").json()["id"]
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/events")):
        response = client.request(
            method, f"/v1/datasets/{dataset_id}{path}", headers=developer.headers
        )
        assert response.status_code == 404 and response.headers["content-type"] == PROBLEM
    assert client.get("/v1/datasets", headers=developer.headers).json()["data"] == []
    assert client.get(f"/v1/datasets/{dataset_id}", headers=other.headers).status_code == 200


def test_a_key_without_the_datasets_scope_gets_403(
    client: TestClient, make_account: Callable[..., Account]
) -> None:
    limited = make_account(scopes=["generate"])
    responses = [
        upload(client, limited, b"a\n1\n"),
        client.get("/v1/datasets", headers=limited.headers),
        client.get("/v1/datasets/ds_01JD0000000000000000000000", headers=limited.headers),
        client.get("/v1/datasets/ds_01JD0000000000000000000000/events", headers=limited.headers),
        client.delete("/v1/datasets/ds_01JD0000000000000000000000", headers=limited.headers),
    ]
    assert [r.status_code for r in responses] == [403] * 5
    assert "'datasets' scope" in responses[0].json()["detail"]


def test_a_dataset_in_use_by_a_training_job_is_not_deleted(
    client: TestClient, developer, sessions
) -> None:
    dataset_id = upload(client, developer, b"a\n1\n").json()["id"]
    with session_scope(sessions) as session:
        session.add(
            TrainingJob(
                user_id=developer.user_id,
                dataset_id=dataset_id,
                task="classification",
                model_name="m",
                status=TrainingStatus.running,
            )
        )
    response = client.delete(f"/v1/datasets/{dataset_id}", headers=developer.headers)
    assert response.status_code == 409 and "training job" in response.json()["detail"]
    assert client.get(f"/v1/datasets/{dataset_id}", headers=developer.headers).status_code == 200


def progress(stage: str, done: int, total: int, unit: str, percent: int) -> dict[str, Any]:
    return {"stage": stage, "done": done, "total": total, "unit": unit, "percent": percent}


def ingest_row(
    sessions: sessionmaker[Session], dataset_id: str, steps: list[dict[str, Any]]
) -> threading.Thread:
    """Move the dataset's row as an ingestion run does, a step every 0.25 s (ten of the stream's
    polls), in a thread."""

    def run() -> None:
        for values in steps:
            time.sleep(0.25)
            with session_scope(sessions) as session:
                session.execute(update(Dataset).where(Dataset.id == dataset_id).values(**values))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def events_of(client: TestClient, account: Account, dataset_id: str) -> list[tuple[str, Any]]:
    with client.stream(
        "GET", f"/v1/datasets/{dataset_id}/events", headers=account.headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        blocks = response.read().decode().split("\n\n")
    events = []
    for block in filter(None, blocks):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_ingestion_progress_shows_on_get_and_streams_until_done(
    client: TestClient,
    developer: Account,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dataset_routes, "POLL_SECONDS", 0.02)
    archive = zip_of({f"{i}.png": png() for i in range(4)})
    dataset = upload(client, developer, archive).json()
    assert dataset["progress"] == progress("waiting to start", 0, 4, "files", 0)

    halfway = progress("decoding images", 2, 4, "files", 45)
    ingest_row(sessions, dataset["id"], [{"status": DatasetStatus.validating, "progress": halfway}])
    time.sleep(0.5)
    fetched = client.get(f"/v1/datasets/{dataset['id']}", headers=developer.headers).json()
    assert fetched["status"] == "validating" and fetched["progress"] == halfway

    steps: list[dict[str, Any]] = [
        {"progress": progress("decoding images", 4, 4, "files", 90)},
        {"progress": progress("writing parquet", 4, 4, "rows", 100)},
        {"status": DatasetStatus.ready},
    ]
    ingest_row(sessions, dataset["id"], steps)
    events = events_of(client, developer, dataset["id"])

    assert [data for kind, data in events if kind == "status"] == [
        {"status": "validating"},
        {"status": "ready"},
    ]
    assert [data["percent"] for kind, data in events if kind == "progress"] == [45, 90, 100]
    assert events[-1][0] == "done"
    done = events[-1][1]
    assert done["id"] == dataset["id"] and done["status"] == "ready"
    assert done["progress"]["percent"] == 100
    # Once it ended, a stream answers where it is and ends at once.
    again = events_of(client, developer, dataset["id"])
    assert [kind for kind, _ in again] == ["status", "progress", "done"]


def test_a_failed_ingestion_streams_done_with_the_reason(
    client: TestClient,
    developer: Account,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dataset_routes, "POLL_SECONDS", 0.02)
    dataset = upload(client, developer, b"x,label\n1,a\n2,b\n").json()
    assert dataset["progress"] == progress("waiting to start", 0, 2, "rows", 0)
    failed = {"status": DatasetStatus.failed, "error": "target column 'y' is not in the table"}
    ingest_row(sessions, dataset["id"], [{"status": DatasetStatus.validating}, failed])
    events = events_of(client, developer, dataset["id"])
    assert events[-2] == ("status", {"status": "failed"}) and events[-1][0] == "done"
    assert events[-1][1]["status"] == "failed" and "'y'" in events[-1][1]["error"]
    assert events[-1][1]["progress"] == dataset["progress"]  # where it stopped


def test_a_stream_that_waits_long_keeps_alive_and_ends_in_bounded_time(
    client: TestClient, developer: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset_routes, "POLL_SECONDS", 0.02)
    monkeypatch.setattr(dataset_routes, "KEEPALIVE_SECONDS", 0.05)
    monkeypatch.setattr(dataset_routes, "MAX_STREAM_SECONDS", 0.3)
    dataset_id = upload(client, developer, b"a\n1\n").json()["id"]
    started = time.monotonic()
    with client.stream(
        "GET", f"/v1/datasets/{dataset_id}/events", headers=developer.headers
    ) as response:
        body = response.read().decode()
    assert time.monotonic() - started < 5
    assert body.startswith("event: status\n") and ": keep-alive\n\n" in body
    assert "event: done" not in body  # still waiting: the client reconnects


def through(client: TestClient, request: httpx.Request) -> httpx.Response:
    """The SDK's request, answered by the app in this process (the test client buffers it)."""
    answer = client.request(
        request.method, str(request.url), headers=dict(request.headers), content=request.read()
    )
    return httpx.Response(
        answer.status_code, headers=answer.headers.multi_items(), content=answer.content
    )


def test_the_sdk_waits_for_a_dataset_to_be_ready(
    client: TestClient,
    developer: Account,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    monkeypatch.setattr(dataset_routes, "POLL_SECONDS", 0.02)
    monkeypatch.setattr(dataset_routes, "MAX_STREAM_SECONDS", 0.4)  # it reconnects past this
    path = tmp_path / "table.csv"
    path.write_bytes(b"x,label\n1,a\n2,b\n")
    transport = httpx.MockTransport(lambda request: through(client, request))
    with GoshenClient("http://testserver", developer.key, transport=transport) as sdk:
        dataset = sdk.upload_dataset(path, "table", target="label")
        assert sdk.get_dataset(dataset["id"])["progress"]["stage"] == "waiting to start"
        steps: list[dict[str, Any]] = [
            {"status": DatasetStatus.validating},
            {"progress": progress("reading rows", 2, 2, "rows", 50)},
            {"progress": progress("writing parquet", 2, 2, "rows", 100)},
            {"status": DatasetStatus.ready},
        ]
        ingest_row(sessions, dataset["id"], steps)
        seen: list[int] = []
        ready = sdk.wait_for_dataset(dataset["id"], on_progress=lambda p: seen.append(p["percent"]))
        assert ready["status"] == "ready" and ready["progress"]["percent"] == 100
        assert seen == sorted(seen) and seen[-1] == 100

        other = sdk.upload_dataset(path, "never ingested")
        with pytest.raises(TimeoutError, match=other["id"]):
            sdk.wait_for_dataset(other["id"], timeout=0.5)

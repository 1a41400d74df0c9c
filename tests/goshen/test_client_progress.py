"""Upload progress (goshen.client_progress): httpx's multipart body, read through ProgressFile
by httpx.Client and by httpx.AsyncClient, reports every byte sent and the file's size."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx

from goshen.client import GoshenClient
from goshen.client_progress import ProgressFile

SIZE = 1_000_003  # several of httpx's 64 KiB chunks, and not a multiple of one


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    path.write_bytes(os.urandom(SIZE))
    return path


def _received(request: httpx.Request, into: list[bytes]) -> httpx.Response:
    into.append(request.content)
    return httpx.Response(201, json={"id": "ds_1", "status": "uploaded"})


def test_a_sync_client_reports_each_chunk_up_to_the_whole_file(tmp_path: Path) -> None:
    path = _file(tmp_path)
    reports: list[tuple[int, int]] = []
    bodies: list[bytes] = []
    transport = httpx.MockTransport(lambda request: _received(request, bodies))
    with httpx.Client(transport=transport) as client, path.open("rb") as file:
        tracked = ProgressFile(file, lambda sent, total: reports.append((sent, total)))
        client.post("http://goshen.test/v1/datasets", files={"file": ("rows.csv", tracked)})

    assert len(reports) > 10 and reports[-1] == (SIZE, SIZE)
    sent = [done for done, _ in reports]
    assert sent == sorted(sent) and {total for _, total in reports} == {SIZE}
    assert path.read_bytes() in bodies[0]  # the bytes counted are the bytes sent


def test_an_async_client_reads_the_same_wrapper(tmp_path: Path) -> None:
    path = _file(tmp_path)
    reports: list[tuple[int, int]] = []
    bodies: list[bytes] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        await request.aread()
        return _received(request, bodies)

    async def upload() -> None:
        transport = httpx.MockTransport(handle)
        async with httpx.AsyncClient(transport=transport) as client:
            with path.open("rb") as file:
                tracked = ProgressFile(file, lambda sent, total: reports.append((sent, total)))
                files = {"file": ("rows.csv", tracked)}
                await client.post("http://goshen.test/v1/datasets", files=files)

    asyncio.run(upload())
    assert len(reports) > 10 and reports[-1] == (SIZE, SIZE)
    assert path.read_bytes() in bodies[0]


def test_a_seek_back_counts_again_from_there(tmp_path: Path) -> None:
    path = _file(tmp_path)
    reports: list[tuple[int, int]] = []
    with path.open("rb") as file:
        tracked = ProgressFile(file, lambda sent, total: reports.append((sent, total)))
        tracked.read(100)
        tracked.seek(0)
        tracked.read(10)
    assert reports == [(100, SIZE), (10, SIZE)]


def test_upload_dataset_reports_progress_with_a_known_length(tmp_path: Path) -> None:
    path = _file(tmp_path)
    reports: list[tuple[int, int]] = []
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        requests.append(request)
        return httpx.Response(201, json={"id": "ds_1", "status": "uploaded"})

    with GoshenClient("http://goshen.test", "gsk_x", transport=httpx.MockTransport(handle)) as sdk:
        dataset = sdk.upload_dataset(path, "rows", on_progress=lambda *r: reports.append(r))

    assert dataset["id"] == "ds_1" and reports[-1] == (SIZE, SIZE)
    # The wrapper keeps the file's length known: a Content-Length, not a chunked body.
    assert int(requests[0].headers["content-length"]) == len(requests[0].content)

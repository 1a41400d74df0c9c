"""The SDK's dataset calls: upload an archive or a table, read it, follow its ingestion.

GoshenClient (goshen.client) inherits them; imports only httpx and the standard library.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol, cast

import httpx

from goshen.client_errors import api_error
from goshen.client_http import _server_sent_events, _until, _without_none
from goshen.client_progress import OnProgress, ProgressFile


class _Calls(Protocol):
    """What these calls need of the client that inherits them."""

    _http: httpx.Client

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...

    def paginate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]: ...


class DatasetCalls:
    """Datasets: what training jobs train on (a developer's key, scope `datasets`)."""

    def upload_dataset(
        self: _Calls,
        path: str | os.PathLike[str],
        name: str,
        *,
        kind: str | None = None,
        target: str | None = None,
        on_progress: OnProgress | None = None,
    ) -> dict[str, Any]:
        """Upload an image archive or a CSV/Parquet table; it is `uploaded`, and ingests next
        (`wait_for_dataset`). `on_progress(sent, total)` is called as its bytes are sent."""
        with open(path, "rb") as file:
            body: BinaryIO = file
            if on_progress is not None:
                # httpx reads (and seeks) it as it would the file itself.
                body = cast(BinaryIO, ProgressFile(file, on_progress))
            return self._object(
                "POST",
                "/v1/datasets",
                data=_without_none(name=name, kind=kind, target=target),
                files={"file": (os.path.basename(path), body, "application/octet-stream")},
                timeout=max(self._http.timeout.read or 0, 300),
            )

    def list_datasets(self: _Calls) -> Iterator[dict[str, Any]]:
        """Your datasets, newest first, fetched a page at a time."""
        return self.paginate("/v1/datasets")

    def get_dataset(self: _Calls, dataset_id: str) -> dict[str, Any]:
        """A dataset: its status (uploaded, validating, ready, failed) and ingestion progress."""
        return self._object("GET", f"/v1/datasets/{dataset_id}")

    def delete_dataset(self: _Calls, dataset_id: str) -> dict[str, Any]:
        """Delete the dataset's files and record; the dataset as it was. Conflict (409) while a
        queued or running training job uses it."""
        return self._object("DELETE", f"/v1/datasets/{dataset_id}")

    def wait_for_dataset(
        self: _Calls,
        dataset_id: str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Follow the dataset's events until it is ready or failed; the dataset as it ended
        (check its `status`). `on_progress` gets each progress object (stage, done, total, unit,
        percent); past `timeout` seconds, TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:  # the server ends a stream after a few minutes; follow on
            with self._http.stream(
                "GET", f"/v1/datasets/{dataset_id}/events", timeout=None
            ) as response:
                if response.is_error:
                    response.read()
                    raise api_error(response)
                lines = _until(response.iter_lines(), deadline, f"dataset {dataset_id}")
                for event in _server_sent_events(lines):
                    if event.kind == "progress" and on_progress is not None:
                        on_progress(event.data)
                    elif event.kind == "done":
                        return event.data

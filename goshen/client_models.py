"""The SDK's calls for the customer loop: train a model on your dataset, watch the job, then run
the model it made (versions, deploys, rollbacks, delete); and the admins' counterparts.

GoshenClient (goshen.client) inherits them; imports only httpx and the standard library.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import httpx

from goshen.client_errors import api_error
from goshen.client_http import (
    JobEvent,
    _server_sent_events,
    _until,
    _without_none,
)
from goshen.client_retries import RetryPolicy
from goshen.client_streams import reopening

# A training job's log stream carries its lines as plain text, not JSON.
LOG_EVENTS = ("log",)
# A deploy loads the version and answers only once it served its example.
DEPLOY_TIMEOUT_SECONDS = 300.0


class _Calls(Protocol):
    """What these calls need of the client that inherits them."""

    _http: httpx.Client
    retries: RetryPolicy

    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...

    def paginate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]: ...


class TrainedModelCalls:
    """Training jobs, and the models they make: their owner's calls, then the admins'."""

    def train(
        self: _Calls,
        dataset_id: str,
        task: str,
        model_name: str,
        *,
        config: dict[str, Any] | None = None,
        deploy: str | None = None,
    ) -> dict[str, Any]:
        """Queue a training job (`task`: diffusion, classification or regression) that makes a
        version of your model `model_name`; it holds its `estimated_cost_micros` from your
        credit. `deploy`: auto (the default), pin or none, what its version does once trained."""
        body = _without_none(
            dataset_id=dataset_id, task=task, model_name=model_name, config=config, deploy=deploy
        )
        return self._object("POST", "/v1/training-jobs", json=body)

    def get_training_job(self: _Calls, job_id: str) -> dict[str, Any]:
        """A training job: its status, `gpu_seconds`, `cost_micros`, the version it registered
        and `links` to its dataset, model, versions, Dagster run and MLflow run."""
        return self._object("GET", f"/v1/training-jobs/{job_id}")

    def list_training_jobs(self: _Calls) -> Iterator[dict[str, Any]]:
        return self.paginate("/v1/training-jobs")

    def cancel_training_job(self: _Calls, job_id: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/training-jobs/{job_id}/cancel")

    def training_logs(
        self: _Calls, job_id: str, last_event_id: int | None = None
    ) -> Iterator[JobEvent]:
        """The job's server-sent events as they happen, until `done`: `log` (`{"message": line}`)
        per line of its log, `status` on changes, `done` (`{"status": ...}`) when it ends.
        `last_event_id` resumes after the events already seen; a stream the server ends because
        it is stopping is opened again (client_streams.reopening)."""
        opened = lambda after: _training_events(self, job_id, after, deadline=None)  # noqa: E731
        return reopening(opened, last_event_id, self.retries)

    def wait_for_training_job(
        self: _Calls,
        job_id: str,
        *,
        timeout: float | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Follow the job's log until it ends; the job as it ended (check its `status`).
        `on_log` gets each line of its log; past `timeout` seconds, TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_event_id = None
        while True:  # a stream a proxy cut short is followed on from the last event seen
            opened = lambda after: _training_events(self, job_id, after, deadline)  # noqa: E731
            for event in reopening(opened, last_event_id, self.retries):
                last_event_id = event.id
                if event.kind == "log" and on_log is not None:
                    on_log(event.data["message"])
                elif event.kind == "done":
                    return self._object("GET", f"/v1/training-jobs/{job_id}")

    def model_versions(self: _Calls, name: str) -> list[dict[str, Any]]:
        """Your model's versions, newest first: metrics, checks, the training job and dataset
        that made each, and which one is `live`."""
        return list(self.paginate(f"/v1/models/{name}/versions"))

    def deploy_model(
        self: _Calls, name: str, *, version: str | None = None, alias: str | None = None
    ) -> dict[str, Any]:
        """Serve your model: `version` pins one, `alias` (e.g. production) follows it, neither
        keeps what it had. A failed deploy raises GoshenAPIError (422 or 409) and leaves the live
        version serving."""
        body = _without_none(version=version, alias=alias)
        return self._object(
            "POST", f"/v1/models/{name}/deploy", json=body or None, timeout=DEPLOY_TIMEOUT_SECONDS
        )

    def undeploy_model(self: _Calls, name: str) -> dict[str, Any]:
        """Stop serving your model: its calls answer 409 until you deploy it again."""
        return self._object("POST", f"/v1/models/{name}/undeploy")

    def rollback_model(self: _Calls, name: str) -> dict[str, Any]:
        """Serve the version from before the last switch again, pinned until you deploy."""
        return self._object("POST", f"/v1/models/{name}/rollback", timeout=DEPLOY_TIMEOUT_SECONDS)

    def describe_model(self: _Calls, name: str, description: str) -> dict[str, Any]:
        """Change your model's description (owners set no price: the operator does)."""
        return self._object("PATCH", f"/v1/models/{name}", json={"description": description})

    def delete_model(self: _Calls, name: str) -> None:
        """Delete your model: it stops serving and its name is free again; its versions stay in
        the MLflow registry for audit, without aliases."""
        self.request("DELETE", f"/v1/models/{name}")

    def admin_list_models(self: _Calls) -> list[dict[str, Any]]:
        """Every catalog entry, private ones and their owners included, with what admins
        manage (alias, pinned and previous versions, status_error, batching limits)."""
        return list(self.paginate("/v1/admin/models", limit=100))

    def admin_model_versions(self: _Calls, name: str) -> list[dict[str, Any]]:
        """The versions the platform recorded for any entry (`<user id>.<name>` for a user's)."""
        return list(self.paginate(f"/v1/admin/models/{name}/versions"))

    def admin_transfer_model(self: _Calls, name: str, owner_email: str) -> dict[str, Any]:
        """Give an entry to another user: it becomes theirs, named `<their id>.<name>`."""
        return self._object(
            "POST", f"/v1/admin/models/{name}/transfer", json={"owner_email": owner_email}
        )

    def admin_delete_model(self: _Calls, name: str) -> None:
        """Delete any entry as its owner would: it stops serving and its name is free."""
        self.request("DELETE", f"/v1/admin/models/{name}")


def _training_events(
    client: _Calls, job_id: str, last_event_id: int | None, deadline: float | None
) -> Iterator[JobEvent]:
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    with client._http.stream(
        "GET", f"/v1/training-jobs/{job_id}/logs", headers=headers, timeout=None
    ) as response:
        if response.is_error:
            response.read()
            raise api_error(response)
        lines = _until(response.iter_lines(), deadline, f"training job {job_id}")
        yield from _server_sent_events(lines, text_kinds=LOG_EVENTS)

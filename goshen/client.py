"""Python SDK for Goshen's HTTP API.

Applications use `Goshen` or `AsyncGoshen` (goshen.client_sync, goshen.client_async): the same
typed calls, sync or awaited. `GoshenClient`, below, is the low-level client: one method per API
operation, the admins' included, answering JSON as dicts (the dashboard and the CLI use it).

from goshen.client import GoshenClient
with GoshenClient("http://127.0.0.1:8000", api_key="gsk_...") as goshen:
    job = goshen.generate("digits-diffusion", {"digit": 7, "num_images": 4}, wait=60)
    png = goshen.download(job["output"]["images"][0]["url"])
    digits = goshen.predict("digits-classifier", {"features": rows})  # labels, probabilities

Training jobs and the models they make (train, wait_for_training_job, deploy_model, ...) are
GoshenClient's too, from goshen.client_models. Errors are typed (goshen.client_errors), and
reads and idempotent POSTs are retried (goshen.client_retries).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpx

from goshen.client_admin import AdminJobCalls
from goshen.client_async import AsyncGoshen, AsyncJobHandle
from goshen.client_billing import AccountCalls, AdminAccountCalls
from goshen.client_datasets import DatasetCalls
from goshen.client_errors import (
    ENDED_STATUSES,
    Conflict,
    Forbidden,
    InsufficientCredits,
    InvalidInput,
    JobFailed,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Timeout,
    Unauthorized,
    api_error,
    error_for,
    job_outcome,
)
from goshen.client_http import (
    GoshenAPIError,
    JobEvent,
    _json_object,
    _problem,
    _server_sent_events,
    _until,
    _without_none,
)
from goshen.client_models import TrainedModelCalls
from goshen.client_ops import AdminOperationsCalls
from goshen.client_retries import RetryPolicy, send
from goshen.client_streams import reopening
from goshen.client_sync import Goshen, JobHandle
from goshen.client_types import (
    DoneEvent,
    Event,
    Job,
    LogEvent,
    OutputEvent,
    ProgressEvent,
    StatusEvent,
)

__all__ = [
    "AsyncGoshen",
    "AsyncJobHandle",
    "Conflict",
    "DoneEvent",
    "Event",
    "Forbidden",
    "Goshen",
    "GoshenAPIError",
    "GoshenClient",
    "InsufficientCredits",
    "InvalidInput",
    "Job",
    "JobEvent",
    "JobFailed",
    "JobHandle",
    "LogEvent",
    "NotFound",
    "OutputEvent",
    "ProgressEvent",
    "RateLimited",
    "RetryPolicy",
    "ServiceUnavailable",
    "StatusEvent",
    "Timeout",
    "Unauthorized",
    "error_for",
]
DEFAULT_TIMEOUT_SECONDS = 30.0


class GoshenClient(
    TrainedModelCalls,
    DatasetCalls,
    AccountCalls,
    AdminJobCalls,
    AdminOperationsCalls,
    AdminAccountCalls,
):
    """A thin, typed-enough wrapper: one method per API operation, errors as GoshenAPIError's
    subclasses (goshen.client_errors). Reads, and POSTs with an Idempotency-Key, are retried on
    429, 503 and lost connections up to `max_retries` times (0: never), waiting `Retry-After` or
    a random time up to min(backoff_cap, backoff_base·2^k) seconds; `retries` holds the policy."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self.retries = RetryPolicy(max_retries, backoff_base, backoff_cap)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> GoshenClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON body (None when empty), retried as `retries` allows (a POST only
        with `idempotent=True`, for a route that honours its Idempotency-Key); an error answer
        raises its GoshenAPIError subclass (`error_for`)."""
        response = send(self._http, self.retries, method, path, **kwargs)
        if response.is_error:
            raise error_for(response.status_code, _problem(response), response.headers)
        return response.json() if response.content else None

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """`request` for the operations that answer a JSON object: all of this client's."""
        return _json_object(self.request(method, path, **kwargs), f"{method} {path}")

    def paginate(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated list, fetching pages as needed."""
        cursor = None
        while True:
            page = self._object("GET", path, params=params | ({"cursor": cursor} if cursor else {}))
            yield from page["data"]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return

    def health(self) -> dict[str, Any]:
        return self._object("GET", "/healthz")

    def readiness(self) -> dict[str, Any]:
        response = self._http.get("/readyz")
        return _json_object(response.json(), "GET /readyz")

    def create_key(
        self,
        name: str,
        scopes: list[str] | None = None,
        monthly_spend_cap_micros: int | None = None,
    ) -> dict[str, Any]:
        """A new key for the caller; the secret is in `["key"]`, returned this once only."""
        body = _without_none(
            name=name, scopes=scopes, monthly_spend_cap_micros=monthly_spend_cap_micros
        )
        return self._object("POST", "/v1/keys", json=body)

    def update_key(self, key_id: str, **changes: Any) -> dict[str, Any]:
        """Rename a key or set its `monthly_spend_cap_micros` (None removes the cap)."""
        return self._object("PATCH", f"/v1/keys/{key_id}", json=changes)

    def balance(self) -> dict[str, Any]:
        """`balance_micros`, `held_micros` and `available_micros` of the caller's account."""
        return self._object("GET", "/v1/credits/balance")

    def list_keys(self) -> list[dict[str, Any]]:
        return list(self.paginate("/v1/keys"))

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return self._object("DELETE", f"/v1/keys/{key_id}")

    def admin_create_user(
        self, email: str, name: str = "", role: str = "developer"
    ) -> dict[str, Any]:
        return self._object(
            "POST", "/v1/admin/users", json={"email": email, "name": name, "role": role}
        )

    def admin_find_user(self, email: str) -> dict[str, Any] | None:
        return next(iter(self.paginate("/v1/admin/users", email=email)), None)

    def admin_create_key(
        self,
        user_id: str,
        name: str,
        scopes: list[str] | None = None,
        monthly_spend_cap_micros: int | None = None,
    ) -> dict[str, Any]:
        """A new key for the user; the secret is in `["key"]`, returned this once only."""
        body = _without_none(
            name=name, scopes=scopes, monthly_spend_cap_micros=monthly_spend_cap_micros
        )
        return self._object("POST", f"/v1/admin/users/{user_id}/keys", json=body)

    def admin_list_keys(self, user_id: str | None = None) -> list[dict[str, Any]]:
        return list(self.paginate("/v1/admin/keys", **_without_none(user_id=user_id)))

    def admin_revoke_key(self, key_id: str) -> dict[str, Any]:
        return self._object("DELETE", f"/v1/admin/keys/{key_id}")

    def list_models(self, owner: str | None = None) -> list[dict[str, Any]]:
        """The models you may call: public ones and your own; `owner="me"`: only your own."""
        return list(self.paginate("/v1/models", **_without_none(owner=owner)))

    def get_model(self, name: str) -> dict[str, Any]:
        """A catalog model: its input JSON Schema, examples, pricing and status."""
        return self._object("GET", f"/v1/models/{name}")

    def predict(self, model: str, inputs: dict[str, Any] | list[Any]) -> dict[str, Any]:
        """Run an ONNX model: `inputs` by input name (MLflow's tensor format), nested lists or
        anything with `.tolist()`; the answer holds `outputs`, and for classifiers `labels` and
        `probabilities`, one per row."""
        if isinstance(inputs, dict):
            inputs = {name: _listed(value) for name, value in inputs.items()}
        else:
            inputs = _listed(inputs)
        return self._object("POST", f"/v1/models/{model}/predict", json={"inputs": inputs})

    def upload_model(
        self, path: str | os.PathLike[str], name: str, description: str = ""
    ) -> dict[str, Any]:
        """Upload an .onnx file as a model of your own (private until an admin publishes it)."""
        with open(path, "rb") as file:
            return self._object(
                "POST",
                "/v1/models",
                data={"name": name, "description": description},
                files={"file": (os.path.basename(path), file, "application/octet-stream")},
                timeout=max(self._http.timeout.read or 0, 300),
            )

    def admin_register_model(self, **entry: Any) -> dict[str, Any]:
        """A catalog entry from the MLflow registry: name, registered_model, alias or version,
        description, pricing, visibility, max_batch_size, max_wait_ms."""
        return self._object("POST", "/v1/admin/models", json=entry)

    def admin_update_model(self, name: str, **changes: Any) -> dict[str, Any]:
        return self._object("PATCH", f"/v1/admin/models/{name}", json=changes)

    def admin_deploy_model(
        self, name: str, *, version: str | None = None, alias: str | None = None
    ) -> dict[str, Any]:
        """Resolve, load beside the live version and probe; the entry, now serving it. A failed
        deploy raises GoshenAPIError (422 or 409) and leaves the live version serving."""
        body = _without_none(version=version, alias=alias)
        return self._object(
            "POST", f"/v1/admin/models/{name}/deploy", json=body or None, timeout=300
        )

    def admin_undeploy_model(self, name: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/admin/models/{name}/undeploy")

    def admin_rollback_model(self, name: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/admin/models/{name}/rollback", timeout=300)

    def generate(
        self,
        model: str,
        model_input: dict[str, Any],
        *,
        wait: int | None = None,
        webhook: str | None = None,
        webhook_events_filter: list[str] | None = None,
        idempotency_key: str | None = None,
        raise_on_failure: bool = False,
    ) -> dict[str, Any]:
        """Queue a generation job; with `wait` (seconds, at most 60) the answer comes when it
        ends or the time is up (and with `raise_on_failure`, JobFailed if it failed or was
        canceled). The `idempotency_key`, one of its own unless given, makes retries safe."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        if wait is not None:
            headers["Prefer"] = f"wait={wait}"
        body = _without_none(
            model=model,
            input=model_input,
            webhook=webhook,
            webhook_events_filter=webhook_events_filter,
        )
        timeout = self._http.timeout.read
        if wait is not None and timeout is not None:
            timeout = max(timeout, wait + 10)
        job = self._object(
            "POST", "/v1/generate", json=body, headers=headers, timeout=timeout, idempotent=True
        )
        return job_outcome(job, raise_on_failure and wait is not None)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._object("GET", f"/v1/jobs/{job_id}")

    def list_jobs(
        self, *, status: str | None = None, model: str | None = None
    ) -> Iterator[dict[str, Any]]:
        return self.paginate("/v1/jobs", **_without_none(status=status, model=model))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/jobs/{job_id}/cancel")

    def job_events(
        self, job_id: str, last_event_id: int | None = None, *, deadline: float | None = None
    ) -> Iterator[JobEvent]:
        """The job's server-sent events until `done` (client_streams.reopening); past the monotonic
        `deadline`, TimeoutError (or httpx.ReadTimeout while no event comes)."""
        opened = lambda after: self._job_events(job_id, after, deadline)  # noqa: E731
        return reopening(opened, last_event_id, self.retries)

    def _job_events(
        self, job_id: str, last_event_id: int | None, deadline: float | None
    ) -> Iterator[JobEvent]:
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        # Past the deadline, a read waiting for the next line ends too (keep-alives are 15 s).
        read = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        timeout = httpx.Timeout(self._http.timeout.connect, read=read)
        with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
        ) as response:
            if response.is_error:
                response.read()
                raise api_error(response)
            lines = _until(response.iter_lines(), deadline, f"job {job_id}")
            yield from _server_sent_events(lines)

    def wait_for_job(
        self, job_id: str, *, timeout: float | None = None, raise_on_failure: bool = False
    ) -> dict[str, Any]:
        """Follow the job's events until it ends; the job as it ended. Past `timeout` seconds,
        Timeout (the job goes on: wait again with its `job_id`); with `raise_on_failure`,
        JobFailed if it failed or was canceled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_event_id = None
        quiet = 0  # streams in a row that brought no event
        try:
            while True:  # a stream cut short is followed on from the last event seen
                before = last_event_id
                for event in self._job_events(job_id, last_event_id, deadline):
                    last_event_id = event.id
                    if event.kind == "done":
                        return job_outcome(self.get_job(job_id), raise_on_failure)
                # Ended without `done` (a proxy that closes long streams, a job older than its
                # events): the job itself says whether it has ended.
                job = self.get_job(job_id)
                if job.get("status") in ENDED_STATUSES:
                    return job_outcome(job, raise_on_failure)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {job_id} did not end in the time given")
                quiet = quiet + 1 if last_event_id == before else 0
                if quiet:
                    self.retries.sleep(self.retries.backoff(min(quiet, 6)))
        except (TimeoutError, httpx.ReadTimeout) as exc:
            if timeout is None:
                raise
            raise Timeout(job_id, timeout) from exc

    def download(self, url: str) -> bytes:
        """An output file by its signed link (the link itself is the credential)."""
        response = httpx.get(url, timeout=self._http.timeout)
        if response.is_error:
            raise api_error(response)
        return response.content

    def webhook_secret(self) -> str:
        """The `whsec_...` secret this account's webhooks are signed with."""
        secret: str = self._object("GET", "/v1/webhooks/default/secret")["key"]
        return secret


def _listed(value: Any) -> Any:
    """Arrays (numpy, torch, ...) as the nested lists JSON carries."""
    return value.tolist() if hasattr(value, "tolist") else value

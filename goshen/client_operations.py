"""Every call of `Goshen` and `AsyncGoshen`, each defined once as an operation (see
goshen.client_calls): jobs, predictions, models, datasets, training jobs, keys, usage and credit.
Imports only httpx, pydantic and the standard library.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from goshen.client_calls import Call, Listing, Sleep, Steps, Upload, listing, operation
from goshen.client_errors import JobFailed, Timeout
from goshen.client_types import (
    ApiKey,
    Balance,
    Dataset,
    Job,
    LedgerEntry,
    Model,
    Prediction,
    TrainingJob,
    Usage,
)

R = TypeVar("R")
# The longest `Prefer: wait` the API honours, in seconds.
MAX_WAIT_SECONDS = 60
# A dataset or model file may take a while to send.
UPLOAD_TIMEOUT_SECONDS = 300.0
# Polling a job, a dataset or a training job: the first and the longest pause between reads.
FIRST_POLL_SECONDS = 0.25
MAX_POLL_SECONDS = 5.0


class Operations:
    """The calls `Goshen` and `AsyncGoshen` share. On `Goshen` each answers its result; on
    `AsyncGoshen` each is awaited for it."""

    # Jobs

    @operation
    def create_job(
        self,
        model: str,
        input: dict[str, Any],  # the API's own name for it
        *,
        wait: int | None = None,
        webhook: str | None = None,
        webhook_events_filter: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Steps[Job]:
        """Queue a generation job. With `wait` (seconds, 1 to 60) the answer comes when it ends
        or the time is up. The `idempotency_key`, one of its own unless given, makes retries of
        a lost answer safe: the API answers a repeat with the same job."""
        return (
            yield from _create_job(
                model, input, wait, webhook, webhook_events_filter, idempotency_key
            )
        )

    @operation
    def run(
        self,
        model: str,
        input: dict[str, Any],  # the API's own name for it
        *,
        timeout: float | None = None,
        raise_on_failure: bool = True,
        idempotency_key: str | None = None,
    ) -> Steps[Job]:
        """Submit a job and wait for it to end: the job, its `images` ready to download.

        It waits in the submission (`Prefer: wait`) and then reads the job, each read held
        until the job ends or a minute passes. Past `timeout` seconds, `Timeout` (the job goes
        on: `wait(error.job_id)`); a failed or canceled job raises `JobFailed`, unless
        `raise_on_failure=False`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        first = MAX_WAIT_SECONDS if timeout is None else _whole_seconds(timeout)
        job = yield from _create_job(model, input, first, None, None, idempotency_key)
        return (yield from _wait(job, deadline, timeout, raise_on_failure))

    @operation
    def get_job(self, job_id: str) -> Steps[Job]:
        return Job.of((yield Call("GET", f"/v1/jobs/{job_id}")))

    @listing
    def list_jobs(self, *, status: str | None = None, model: str | None = None) -> Listing[Job]:
        """Your jobs, newest first; `status` and `model` filter them."""
        return Listing("/v1/jobs", Job.of, {"status": status, "model": model})

    @operation
    def wait(
        self, job_id: str, *, timeout: float | None = None, raise_on_failure: bool = True
    ) -> Steps[Job]:
        """Wait for the job to end; the job as it ended. Past `timeout` seconds, `Timeout` (the
        job goes on); a failed or canceled job raises `JobFailed`, unless
        `raise_on_failure=False`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = Job.of((yield Call("GET", f"/v1/jobs/{job_id}")))
        return (yield from _wait(job, deadline, timeout, raise_on_failure))

    @operation
    def cancel(self, job_id: str) -> Steps[Job]:
        """Cancel a job: a queued one ends at once, a running one at its next step. `Conflict`
        when it already ended."""
        return Job.of((yield Call("POST", f"/v1/jobs/{job_id}/cancel")))

    @operation
    def download(self, url: str) -> Steps[bytes]:
        """An output file by its signed link (the link is the credential; no key is sent)."""
        content: bytes = yield Call("GET", url, signed=True)
        return content

    # Models and predictions

    @listing
    def list_models(self, *, owner: str | None = None) -> Listing[Model]:
        """The models you may call: public ones and yours; `owner="me"`: only yours."""
        return Listing("/v1/models", Model.of, {"owner": owner})

    @operation
    def get_model(self, name: str) -> Steps[Model]:
        return Model.of((yield Call("GET", f"/v1/models/{name}")))

    @operation
    def predict(self, model: str, inputs: dict[str, Any] | list[Any]) -> Steps[Prediction]:
        """Run an ONNX model on `inputs` (by input name, or the rows of its one input; nested
        lists or anything with `.tolist()`, such as numpy arrays), or on a whole request body
        `{"inputs": ...}` as the model's published examples are: `predict(name,
        model.examples[0])` sends the example as it is."""
        if isinstance(inputs, dict) and list(inputs) == ["inputs"]:
            # A request body. Read as an input named `inputs` it would mean the same request:
            # alone, it is the model's one input, which a bare list of rows also is.
            inputs = inputs["inputs"]
        if isinstance(inputs, dict):
            inputs = {name: _listed(value) for name, value in inputs.items()}
        else:
            inputs = _listed(inputs)
        body = {"inputs": inputs}
        return Prediction.of((yield Call("POST", f"/v1/models/{model}/predict", json=body)))

    # Datasets

    @operation
    def upload_dataset(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        kind: str | None = None,
        target: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Steps[Dataset]:
        """Upload an image archive or a CSV/Parquet table; it is `uploaded`, then ingests
        (`wait_for_dataset`). `on_progress(sent, total)` is called as its bytes go out."""
        fields = {
            key: value
            for key, value in {"name": name, "kind": kind, "target": target}.items()
            if value is not None
        }
        upload = Upload(path, fields, on_progress)
        call = Call("POST", "/v1/datasets", upload=upload, timeout=UPLOAD_TIMEOUT_SECONDS)
        return Dataset.of((yield call))

    @operation
    def get_dataset(self, dataset_id: str) -> Steps[Dataset]:
        return Dataset.of((yield Call("GET", f"/v1/datasets/{dataset_id}")))

    @listing
    def list_datasets(self) -> Listing[Dataset]:
        return Listing("/v1/datasets", Dataset.of)

    @operation
    def delete_dataset(self, dataset_id: str) -> Steps[None]:
        yield Call("DELETE", f"/v1/datasets/{dataset_id}")

    @operation
    def wait_for_dataset(self, dataset_id: str, *, timeout: float | None = None) -> Steps[Dataset]:
        """Read the dataset until it is ready or failed; past `timeout` seconds, TimeoutError."""
        return (
            yield from _poll(
                lambda: Call("GET", f"/v1/datasets/{dataset_id}"),
                Dataset.of,
                lambda dataset: dataset.status in ("ready", "failed"),
                timeout,
                f"dataset {dataset_id}",
            )
        )

    # Training jobs

    @operation
    def train(
        self,
        dataset_id: str,
        task: str,
        model_name: str,
        *,
        config: dict[str, Any] | None = None,
        deploy: str | None = None,
    ) -> Steps[TrainingJob]:
        """Queue a training job (`task`: diffusion, classification or regression) that makes a
        version of your model `model_name`; `deploy`: auto (the default), pin or none."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "task": task, "model_name": model_name}
        body |= {k: v for k, v in {"config": config, "deploy": deploy}.items() if v is not None}
        return TrainingJob.of((yield Call("POST", "/v1/training-jobs", json=body)))

    @operation
    def get_training_job(self, job_id: str) -> Steps[TrainingJob]:
        return TrainingJob.of((yield Call("GET", f"/v1/training-jobs/{job_id}")))

    @listing
    def list_training_jobs(self) -> Listing[TrainingJob]:
        return Listing("/v1/training-jobs", TrainingJob.of)

    @operation
    def cancel_training_job(self, job_id: str) -> Steps[TrainingJob]:
        return TrainingJob.of((yield Call("POST", f"/v1/training-jobs/{job_id}/cancel")))

    @operation
    def wait_for_training_job(
        self, job_id: str, *, timeout: float | None = None
    ) -> Steps[TrainingJob]:
        """Read the training job until it ends (check its `status`); past `timeout` seconds,
        TimeoutError. `training_logs` follows its log as it goes."""
        return (
            yield from _poll(
                lambda: Call("GET", f"/v1/training-jobs/{job_id}"),
                TrainingJob.of,
                lambda job: job.ended,
                timeout,
                f"training job {job_id}",
            )
        )

    # Keys, usage and credit

    @operation
    def create_key(
        self,
        name: str,
        *,
        scopes: list[str] | None = None,
        monthly_spend_cap_micros: int | None = None,
    ) -> Steps[ApiKey]:
        """A new key of yours; its secret is in `key`, in this answer only."""
        body: dict[str, Any] = {"name": name}
        if scopes is not None:
            body["scopes"] = scopes
        if monthly_spend_cap_micros is not None:
            body["monthly_spend_cap_micros"] = monthly_spend_cap_micros
        return ApiKey.of((yield Call("POST", "/v1/keys", json=body)))

    @listing
    def list_keys(self) -> Listing[ApiKey]:
        return Listing("/v1/keys", ApiKey.of)

    @operation
    def revoke_key(self, key_id: str) -> Steps[ApiKey]:
        return ApiKey.of((yield Call("DELETE", f"/v1/keys/{key_id}")))

    @operation
    def usage(self, *, start: str | None = None, end: str | None = None) -> Steps[Usage]:
        """Your metered usage over [start, end) (ISO dates or times; this month by default):
        totals, by day and by model, with your credit now."""
        return Usage.of((yield Call("GET", "/v1/usage", params={"start": start, "end": end})))

    @operation
    def balance(self) -> Steps[Balance]:
        return Balance.of((yield Call("GET", "/v1/credits/balance")))

    @listing
    def ledger(self) -> Listing[LedgerEntry]:
        """Your credit ledger, newest first: grants, holds, captures, releases."""
        return Listing("/v1/credits", LedgerEntry.of)


def _create_job(
    model: str,
    model_input: dict[str, Any],
    wait: int | None,
    webhook: str | None,
    webhook_events_filter: list[str] | None,
    idempotency_key: str | None,
) -> Steps[Job]:
    headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
    timeout = None
    if wait is not None:
        headers["Prefer"] = f"wait={wait}"
        timeout = wait + 30.0  # the answer is held up to `wait` seconds
    body: dict[str, Any] = {"model": model, "input": model_input}
    if webhook is not None:
        body["webhook"] = webhook
    if webhook_events_filter is not None:
        body["webhook_events_filter"] = webhook_events_filter
    call = Call(
        "POST", "/v1/generate", json=body, headers=headers, timeout=timeout, idempotent=True
    )
    return Job.of((yield call))


def _wait(
    job: Job, deadline: float | None, timeout: float | None, raise_on_failure: bool
) -> Steps[Job]:
    """Read the job, each read held by the API until it ends or up to a minute passes."""
    pause = FIRST_POLL_SECONDS
    while not job.ended:
        remaining = MAX_WAIT_SECONDS if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(job.id, timeout or 0)
        seconds = _whole_seconds(remaining)
        asked = time.monotonic()
        call = Call(
            "GET", f"/v1/jobs/{job.id}", headers={"Prefer": f"wait={seconds}"}, timeout=seconds + 30
        )
        job = Job.of((yield call))
        if not job.ended and time.monotonic() - asked < seconds / 2:
            # An API that does not hold reads answered at once: poll, backing off.
            yield Sleep(min(pause, max(remaining, 0)))
            pause = min(pause * 2, MAX_POLL_SECONDS)
    if raise_on_failure and job.status in ("failed", "canceled"):
        raise JobFailed(job)
    return job


def _poll(
    call: Callable[[], Call],
    parse: Callable[[Any], R],
    ended: Callable[[R], bool],
    timeout: float | None,
    what: str,
) -> Steps[R]:
    """Read with `call()` until `ended(parse(answer))`, pausing longer each time."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = FIRST_POLL_SECONDS
    while True:
        result = parse((yield call()))
        if ended(result):
            return result
        if deadline is not None and time.monotonic() + pause > deadline:
            raise TimeoutError(f"{what} did not end in the time given")
        yield Sleep(pause)
        pause = min(pause * 2, MAX_POLL_SECONDS)


def _whole_seconds(seconds: float) -> int:
    """A `Prefer: wait` for up to `seconds`: whole seconds from 1 to 60."""
    return max(1, min(MAX_WAIT_SECONDS, math.ceil(seconds)))


def _listed(value: Any) -> Any:
    """Arrays (numpy, torch, ...) as the nested lists JSON carries."""
    return value.tolist() if hasattr(value, "tolist") else value

"""`Goshen` and `AsyncGoshen` (the `connect` fixture, tests/fixtures/sdk.py) on the training loop
against the real API on uvicorn: upload a dataset with progress, submit a training job, follow
its log as typed events, wait for it, cancel another.

Training itself is the pipelines' (tests/goshen_pipelines/defs/test_customer_models.py); here a
job's run is what the Dagster run would write to its row (as in test_client_models.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from goshen.client import Conflict, DoneEvent, LogEvent, StatusEvent
from goshen.config import Settings
from serving.routes import training as training_routes
from tests.fixtures.accounts import Account
from tests.fixtures.training import LINES, digits_archive, run_training_job


def test_a_training_job_is_submitted_followed_and_waited_for(
    live_api: Settings,
    developer: Account,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    connect: Callable[..., Any],
) -> None:
    monkeypatch.setattr(training_routes, "LOG_POLL_SECONDS", 0.02)
    monkeypatch.setattr(training_routes, "KEEPALIVE_SECONDS", 0.05)
    archive = tmp_path / "digits.zip"
    archive.write_bytes(digits_archive({0: "zero", 1: "one"}))
    sdk = connect(live_api.api_url, developer.key)

    dataset = sdk.upload_dataset(archive, "digits")
    job = sdk.train(dataset.id, "diffusion", "duo", config={"epochs": 1}, deploy="none")
    assert (job.status, job.model_name, job.dataset_id) == ("queued", "duo", dataset.id)
    assert job.estimated_cost_micros and job.estimated_cost_micros > 0
    assert [listed.id for listed in sdk.list_training_jobs()] == [job.id]
    with pytest.raises(TimeoutError, match=job.id):  # nothing launches it here
        sdk.wait_for_training_job(job.id, timeout=0.5)

    run_training_job(sessions, job.id, LINES)
    events = list(sdk.training_logs(job.id))
    assert [event.message for event in events if isinstance(event, LogEvent)] == LINES
    assert isinstance(events[-2], StatusEvent) and events[-2].status == "succeeded"
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "succeeded"
    resumed = list(sdk.training_logs(job.id, last_event_id=events[1].id))
    assert [event.message for event in resumed if isinstance(event, LogEvent)] == LINES[2:]
    ended = sdk.wait_for_training_job(job.id, timeout=30)
    assert ended.status == "succeeded" and ended.cost_micros and ended.cost_micros > 0
    with pytest.raises(Conflict):
        sdk.cancel_training_job(job.id)

    other = sdk.train(dataset.id, "diffusion", "trio", deploy="none")
    assert sdk.cancel_training_job(other.id).status == "canceled"
    assert sdk.get_training_job(other.id).ended

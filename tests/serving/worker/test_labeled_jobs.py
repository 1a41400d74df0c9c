"""Jobs for a model trained on labeled images: the worker reads their class names and draws the
classes the version's spec gives those names."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import Job, JobStatus, Model
from goshen.runtimes.inputs import batch_key, checked_input
from serving.jobs import transitions
from tests.fixtures.accounts import Account
from tests.fixtures.models import register_tiny_digits
from tests.serving.worker.jobs import has_ended, wait_for

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _labeled_model(make_model: Callable[..., Model], mlflow_server: str) -> Model:
    """An entry serving a tiny random model whose spec names its classes NAMES."""
    registered = register_tiny_digits(
        mlflow_server, f"tiny-labeled-{secrets.token_hex(3)}", class_names=NAMES
    )
    return make_model(registered.name, registered.version)


def _queue(
    sessions: sessionmaker[Session],
    account: Account,
    model: Model,
    classes: list[str],
    **model_input: Any,
) -> str:
    """A job as POST /v1/generate queues it for an entry with `classes`, one attempt only."""
    with session_scope(sessions) as session:
        session.execute(update(Model).where(Model.id == model.id).values(classes=classes))
        checked = checked_input(model.runtime, classes, {"seed": 1} | model_input)
        job = Job(
            user_id=account.user_id,
            api_key_id=account.key_id,
            model_id=model.id,
            model_version=model.live_version,
            input=checked.model_dump(mode="json"),
            batch_key=batch_key(checked),
            max_attempts=1,
        )
        transitions.enqueue(session, job)
        return job.id


def test_jobs_by_class_name_and_index_succeed_with_their_images(
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
    mlflow_server: str,
    start_worker: Callable[..., threading.Event],
) -> None:
    model = _labeled_model(make_model, mlflow_server)
    ids = [
        _queue(sessions, developer, model, NAMES, label="seven", num_images=2),
        _queue(sessions, developer, model, NAMES, label=3),
    ]
    start_worker()
    jobs = wait_for(sessions, ids, has_ended)
    assert [job.status for job in jobs] == [JobStatus.succeeded] * 2, [j.error for j in jobs]
    assert [job.input["label"] for job in jobs] == ["seven", "three"]
    assert [len(job.output["images"]) for job in jobs if job.output is not None] == [2, 1]


def test_a_class_name_the_version_lacks_fails_the_job_naming_it(
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
    mlflow_server: str,
    start_worker: Callable[..., threading.Event],
) -> None:
    model = _labeled_model(make_model, mlflow_server)
    # The entry moved to classes its live version does not have (a newer version's, say).
    job_id = _queue(sessions, developer, model, [*NAMES[:9], "ten"], label="ten")
    start_worker()
    (job,) = wait_for(sessions, [job_id], has_ended)
    assert job.status == JobStatus.failed and "ValueError" in (job.error or "")
    assert "'ten' is not a class of this model version" in job.attempt_errors[-1]["error"]

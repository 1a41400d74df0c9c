"""/v1/admin workers, stats, datasets and training jobs: what an admin reads to run the platform."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen.client import GoshenAPIError, GoshenClient
from goshen.db import session_scope
from goshen.db.models import (
    Dataset,
    DatasetKind,
    DatasetStatus,
    Job,
    JobStatus,
    Model,
    ModelStatus,
    TrainingJob,
    TrainingStatus,
    UsageEvent,
    Worker,
    WorkerStatus,
)
from goshen.ids import new_id
from serving.jobs.stats import percentile
from tests.fixtures.accounts import Account

ROUTES = ("/v1/admin/workers", "/v1/admin/stats", "/v1/admin/datasets", "/v1/admin/training-jobs")


def _worker(worker_id: str, status: WorkerStatus, heartbeat_age: timedelta) -> Worker:
    now = datetime.now(UTC)
    return Worker(
        id=worker_id,
        host="gpu-1",
        pid=42,
        device_name="NVIDIA H100",
        device_memory_bytes=80 * 2**30,
        loaded_models=[{"model": "digits", "version": "3"}],
        status=status,
        started_at=now - timedelta(days=3),
        heartbeat_at=now - heartbeat_age,
    )


def _usage(
    session: Session,
    account: Account,
    at: datetime,
    kind: str,
    cost: int,
    *,
    images: int | None = None,
    seconds: float | None = None,
) -> None:
    session.add(
        UsageEvent(
            user_id=account.user_id,
            kind=kind,
            quantity=1,
            unit="image",
            cost_micros=cost,
            images=images,
            seconds=seconds,
            created_at=at,
        )
    )


@pytest.mark.parametrize("route", ROUTES)
def test_only_admins_read_them(
    client: TestClient, admin: Account, developer: Account, route: str
) -> None:
    assert client.get(route, headers=developer.headers).status_code == 403
    assert client.get(route).status_code == 401
    assert client.get(route, headers=admin.headers).status_code == 200


def test_workers_show_staleness_and_their_running_jobs(
    client: TestClient,
    admin: Account,
    developer: Account,
    sessions: sessionmaker[Session],
    catalog_model: Model,
) -> None:
    with session_scope(sessions) as session:
        session.add(_worker("fresh", WorkerStatus.busy, timedelta(seconds=1)))
        session.add(_worker("silent", WorkerStatus.idle, timedelta(seconds=60)))
        session.add(_worker("stopped-now", WorkerStatus.stopped, timedelta(seconds=120)))
        session.add(_worker("gone", WorkerStatus.stopped, timedelta(days=2)))
        running = Job(
            user_id=developer.user_id,
            model_id=catalog_model.id,
            status=JobStatus.running,
            lease_owner="fresh",
        )
        # Its lease lapsed and it was queued again: the worker no longer runs it.
        requeued = Job(user_id=developer.user_id, model_id=catalog_model.id, lease_owner="fresh")
        session.add_all([running, requeued])
    answer = client.get("/v1/admin/workers", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    workers = {worker["id"]: worker for worker in body["data"]}
    assert [worker["id"] for worker in body["data"]] == ["fresh", "silent", "stopped-now"]
    assert body["stale_after_seconds"] == 15.0 and body["has_more"] is False
    fresh, silent = workers["fresh"], workers["silent"]
    assert fresh["stale"] is False and 0 <= fresh["heartbeat_age_seconds"] < 15
    assert silent["stale"] is True and silent["heartbeat_age_seconds"] >= 60
    assert workers["stopped-now"]["stale"] is False  # not expected to heartbeat
    assert fresh["running_jobs"] == [{"id": running.id, "model": catalog_model.name}]
    assert silent["running_jobs"] == []
    assert fresh["device_name"] == "NVIDIA H100" and fresh["status"] == "busy"
    assert fresh["loaded_models"] == [{"model": "digits", "version": "3"}]

    every = client.get("/v1/admin/workers?include_gone=true", headers=admin.headers).json()
    assert [worker["id"] for worker in every["data"]][-1] == "gone"
    first = client.get("/v1/admin/workers?limit=1", headers=admin.headers).json()
    assert [worker["id"] for worker in first["data"]] == ["fresh"] and first["has_more"]
    assert client.get("/v1/admin/workers?limit=0", headers=admin.headers).status_code == 422


def test_stats_count_jobs_queues_percentiles_and_spend(
    client: TestClient,
    admin: Account,
    developer: Account,
    sessions: sessionmaker[Session],
    make_model: Callable[..., Model],
) -> None:
    before = client.get("/v1/admin/stats", headers=admin.headers).json()
    first, second = make_model(), make_model()
    now = datetime.now(UTC)
    recent, old = now - timedelta(minutes=10), now - timedelta(hours=3)

    def job(model: Model, status: JobStatus, created: datetime, **fields: Any) -> Job:
        return Job(
            user_id=developer.user_id,
            model_id=model.id,
            status=status,
            created_at=created,
            **fields,
        )

    def ended(status: JobStatus, queued: float, ran: float | None, at: datetime) -> Job:
        return job(first, status, at, completed_at=at, queue_seconds=queued, run_seconds=ran)

    with session_scope(sessions) as session:
        session.add_all(
            [
                job(first, JobStatus.queued, recent),
                job(first, JobStatus.queued, recent),
                job(first, JobStatus.queued, old),  # queued now, created before the window
                job(second, JobStatus.queued, recent),
                job(second, JobStatus.running, recent),
                ended(JobStatus.succeeded, 1.0, 4.0, recent),
                ended(JobStatus.succeeded, 2.0, 8.0, recent),
                ended(JobStatus.succeeded, 3.0, None, recent),
                ended(JobStatus.failed, 10.0, None, recent),
                ended(JobStatus.succeeded, 500.0, 500.0, old),  # before the window
                _worker("alive", WorkerStatus.idle, timedelta(seconds=1)),
                _worker("stale", WorkerStatus.busy, timedelta(minutes=5)),
                _worker("stopped", WorkerStatus.stopped, timedelta(seconds=1)),
            ]
        )
        disabled = session.get(Model, second.id)
        assert disabled is not None
        disabled.status = ModelStatus.disabled
        events = [
            (recent, "generation", 1000, 4, None),
            (recent, "generation", 500, 2, None),
            (old, "generation", 3000, 8, None),
            (now - timedelta(days=40), "generation", 7000, 1, None),
        ] + [(recent, "prediction", 10, None, seconds) for seconds in (0.1, 0.2, 0.3, 0.4, 0.5)]
        for at, kind, cost, images, seconds in events:
            _usage(session, developer, at, kind, cost, images=images, seconds=seconds)

    answer = client.get("/v1/admin/stats?window=1h", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    stats = answer.json()
    assert stats["window"] == "1h"
    assert stats["jobs_by_status"] == {
        "queued": 3,
        "running": 1,
        "succeeded": 3,
        "failed": 1,
        "canceled": 0,
    }
    assert stats["queued"] == 4
    assert stats["queued_by_model"] == {first.name: 3, second.name: 1}
    # Linear interpolation between the closest ranks, by hand: rank = p·(n-1).
    assert stats["queue_seconds"] == {"count": 4, "p50": 2.5, "p95": pytest.approx(8.95)}
    assert stats["run_seconds"] == {"count": 2, "p50": 6.0, "p95": pytest.approx(7.8)}
    assert stats["images_per_minute"] == pytest.approx(6 / 60)
    assert stats["predictions"] == {
        "count": 5,
        "per_minute": pytest.approx(5 / 60),
        "p95_seconds": pytest.approx(0.48),
    }
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    assert stats["spend"] == {
        "window_micros": 1550,
        "today_micros": sum(cost for at, _, cost, _, _ in events if at >= today),
        "month_micros": sum(cost for at, _, cost, _, _ in events if at >= month),
    }
    assert stats["workers_alive"] == 1
    assert stats["models_deployed"] == before["models_deployed"] + 1
    # Everything in the window happened at `recent`: one slice of the 60 holds it all.
    assert len(stats["series"]) == 60
    busy = [bucket for bucket in stats["series"] if bucket["jobs"] or bucket["cost_micros"]]
    assert [(b["jobs"], b["images"], b["predictions"], b["cost_micros"]) for b in busy] == [
        (8, 6, 5, 1550)
    ]
    slice_start = datetime.fromisoformat(busy[0]["start"])
    assert slice_start <= recent < slice_start + timedelta(minutes=1)

    wider = client.get("/v1/admin/stats?window=6h", headers=admin.headers).json()
    assert wider["jobs_by_status"]["succeeded"] == 4 and wider["queue_seconds"]["count"] == 5
    assert wider["spend"]["window_micros"] == 4550


@pytest.mark.parametrize("window", ["2h", "1H", "", "60m"])
def test_stats_refuse_an_unknown_window(client: TestClient, admin: Account, window: str) -> None:
    answer = client.get("/v1/admin/stats", params={"window": window}, headers=admin.headers)
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 10.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 10.0], 0.95) == pytest.approx(8.95)


def test_every_users_datasets_and_training_jobs_filter_and_paginate(
    client: TestClient,
    admin: Account,
    developer: Account,
    make_account: Callable[..., Account],
    sessions: sessionmaker[Session],
) -> None:
    other = make_account()
    # Ids made in one millisecond sort at random: sorted, these are in the order listed below.
    datasets, jobs = sorted(new_id("ds") for _ in range(3)), sorted(new_id("trn") for _ in range(3))
    with session_scope(sessions) as session:
        for dataset_id, (owner, dataset_status) in zip(
            datasets,
            [
                (developer, DatasetStatus.ready),
                (other, DatasetStatus.ready),
                (developer, DatasetStatus.failed),
            ],
            strict=True,
        ):
            session.add(
                Dataset(
                    id=dataset_id,
                    user_id=owner.user_id,
                    name="digits",
                    kind=DatasetKind.images,
                    status=dataset_status,
                    storage_prefix="datasets/x",
                )
            )
        session.flush()
        for job_id, (owner, status) in zip(
            jobs,
            [
                (developer, TrainingStatus.succeeded),
                (other, TrainingStatus.running),
                (developer, TrainingStatus.failed),
            ],
            strict=True,
        ):
            session.add(
                TrainingJob(
                    id=job_id,
                    user_id=owner.user_id,
                    dataset_id=datasets[0],
                    task="classification",
                    model_name="shapes",
                    status=status,
                    dagster_run_id="run-1",
                )
            )

    def ids(path: str, **params: Any) -> list[str]:
        answer = client.get(path, params=params, headers=admin.headers)
        assert answer.status_code == 200, answer.text
        return [item["id"] for item in answer.json()["data"]]

    assert ids("/v1/admin/datasets") == datasets[::-1]
    assert ids("/v1/admin/datasets", user_id=developer.user_id) == [datasets[2], datasets[0]]
    assert ids("/v1/admin/datasets", status="ready") == [datasets[1], datasets[0]]
    assert ids("/v1/admin/training-jobs") == jobs[::-1]
    assert ids("/v1/admin/training-jobs", user_id=other.user_id, status="running") == [jobs[1]]

    page = client.get("/v1/admin/training-jobs?limit=2", headers=admin.headers).json()
    assert [job["id"] for job in page["data"]] == [jobs[2], jobs[1]] and page["has_more"]
    rest = ids("/v1/admin/training-jobs", limit=2, cursor=page["next_cursor"])
    assert rest == [jobs[0]]
    rendered = page["data"][1]
    assert rendered["user_id"] == other.user_id and rendered["status"] == "running"
    assert rendered["links"]["dagster_run"].endswith("/runs/run-1")
    dataset = client.get("/v1/admin/datasets?limit=1", headers=admin.headers).json()["data"][0]
    assert dataset["user_id"] == developer.user_id and "storage_prefix" not in dataset

    for path in ("/v1/admin/datasets", "/v1/admin/training-jobs"):
        for params in ({"user_id": "not-a-user"}, {"status": "sleeping"}, {"limit": 101}):
            answer = client.get(path, params=params, headers=admin.headers)
            assert answer.status_code == 422, (path, params)


def test_the_sdk_reads_them(
    client: TestClient, admin: Account, developer: Account, sessions: sessionmaker[Session]
) -> None:
    with session_scope(sessions) as session:
        session.add(_worker("fresh", WorkerStatus.idle, timedelta(seconds=1)))
        dataset = Dataset(
            user_id=developer.user_id,
            name="digits",
            kind=DatasetKind.tabular,
            status=DatasetStatus.ready,
            storage_prefix="datasets/x",
        )
        session.add(dataset)
        session.flush()
        session.add(
            TrainingJob(
                user_id=developer.user_id,
                dataset_id=dataset.id,
                task="regression",
                model_name="prices",
                status=TrainingStatus.queued,
            )
        )

    def through(request: httpx.Request) -> httpx.Response:
        answer = client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.read()
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    transport = httpx.MockTransport(through)
    with GoshenClient("http://testserver", admin.key, transport=transport) as sdk:
        assert [worker["id"] for worker in sdk.admin_workers()["data"]] == ["fresh"]
        assert sdk.admin_stats("5m")["workers_alive"] == 1
        listed = list(sdk.admin_list_datasets(user_id=developer.user_id, status="ready"))
        assert [item["id"] for item in listed] == [dataset.id]
        assert list(sdk.admin_list_datasets(status="failed")) == []
        trainings = list(sdk.admin_list_training_jobs(status="queued"))
        assert [job["model_name"] for job in trainings] == ["prices"]
        with pytest.raises(GoshenAPIError) as refused:
            sdk.admin_stats("2h")
        assert refused.value.status_code == 422

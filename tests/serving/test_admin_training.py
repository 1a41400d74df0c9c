"""GET /v1/admin/training-jobs/{id}: any user's training job with the end of its log."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from goshen.db import session_scope
from goshen.db.models import TrainingJob, TrainingStatus
from tests.fixtures.accounts import Account


def test_an_admin_reads_any_users_job_with_its_log_tail(
    client: TestClient, admin: Account, developer: Account, sessions: sessionmaker[Session]
) -> None:
    with session_scope(sessions) as session:
        job = TrainingJob(
            user_id=developer.user_id,
            task="classification",
            model_name="shapes",
            status=TrainingStatus.running,
            dagster_run_id="run-7",
            logs="".join(f"epoch {n}\n" for n in range(5)),
        )
        session.add(job)
        session.flush()
        job_id = job.id
    path = f"/v1/admin/training-jobs/{job_id}"

    answer = client.get(path, params={"lines": 2}, headers=admin.headers)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["user_id"] == developer.user_id and found["status"] == "running"
    assert found["log_tail"] == ["epoch 3", "epoch 4"] and found["log_lines"] == 5
    assert found["links"]["dagster_run"].endswith("/runs/run-7")
    everything = client.get(path, params={"lines": 50}, headers=admin.headers).json()
    assert len(everything["log_tail"]) == 5
    assert client.get(path, params={"lines": 0}, headers=admin.headers).json()["log_tail"] == []

    assert client.get(path, headers=developer.headers).status_code == 403
    assert (
        client.get(f"/v1/admin/training-jobs/trn_{'0' * 26}", headers=admin.headers).status_code
        == 404
    )
    assert client.get(path, params={"lines": 2001}, headers=admin.headers).status_code == 422

"""The training page against a real API: every user's datasets and training jobs filtered by
status, and a picked job's details, Dagster and MLflow links and log tail."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from goshen.db import session_scope
from goshen.db.models import Dataset, DatasetKind, DatasetStatus, TrainingJob, TrainingStatus
from goshen.ids import new_id
from tests.dashboard.conftest import Dashboard, rendered, texts
from tests.fixtures.accounts import Account


def _column(app: AppTest, table_with: str, column: str) -> list[object]:
    frame = next(frame.value for frame in app.dataframe if table_with in frame.value.columns)
    return list(frame[column])


def _seed(sessions: sessionmaker[Session], developer: Account, other: Account) -> list[str]:
    """Two datasets and three training jobs (ids sorted, so oldest first)."""
    datasets, jobs = sorted(new_id("ds") for _ in range(2)), sorted(new_id("trn") for _ in range(3))
    with session_scope(sessions) as session:
        for dataset_id, owner, name, status, size in (
            (datasets[0], developer, "digits", DatasetStatus.ready, 2_500_000),
            (datasets[1], other, "shapes", DatasetStatus.failed, 0),
        ):
            session.add(
                Dataset(
                    id=dataset_id,
                    user_id=owner.user_id,
                    name=name,
                    kind=DatasetKind.images,
                    status=status,
                    storage_prefix="datasets/x",
                    size_bytes=size,
                    file_count=1797,
                )
            )
        session.flush()
        for job_id, owner, status, logs, cost in (
            (jobs[0], developer, TrainingStatus.succeeded, "epoch 1\nepoch 2\ndone\n", 3_000_000),
            (jobs[1], other, TrainingStatus.failed, "epoch 1\n", None),
            (jobs[2], other, TrainingStatus.running, "loading\nepoch 1 loss 0.41\n", None),
        ):
            session.add(
                TrainingJob(
                    id=job_id,
                    user_id=owner.user_id,
                    dataset_id=datasets[0],
                    task="classification",
                    model_name=f"model-{job_id[-4:].lower()}",
                    status=status,
                    logs=logs,
                    dagster_run_id=f"run-{job_id[-6:].lower()}",
                    mlflow_run_id="abc123" if status is TrainingStatus.succeeded else None,
                    cost_micros=cost,
                    gpu_seconds=42.0 if cost else None,
                )
            )
    return jobs


def test_every_users_datasets_and_training_jobs_filter_by_status(
    dashboard: Dashboard,
    developer: Account,
    make_account: Callable[..., Account],
    sessions: sessionmaker[Session],
) -> None:
    other = make_account()
    jobs = _seed(sessions, developer, other)

    app = dashboard.open("training")

    assert not app.error
    assert _column(app, "size", "name") == ["shapes", "digits"]
    assert _column(app, "size", "size") == ["0 bytes", "2.5 MB"]
    assert _column(app, "size", "rows / files") == ["1,797 files", "1,797 files"]
    assert _column(app, "model", "id") == jobs[::-1]
    assert _column(app, "model", "status") == ["running", "failed", "succeeded"]
    assert _column(app, "model", "cost (credits)") == ["—", "—", "3"]

    app.selectbox(key="training.ds").set_value("ready").run()
    assert _column(app, "size", "name") == ["digits"]
    app.selectbox(key="training.status").set_value("failed").run()
    assert not app.exception
    assert _column(app, "model", "id") == [jobs[1]]
    assert app.selectbox(key="training.job").value == jobs[1]


def test_a_picked_job_shows_its_details_run_links_and_log(
    dashboard: Dashboard,
    developer: Account,
    make_account: Callable[..., Account],
    sessions: sessionmaker[Session],
) -> None:
    jobs = _seed(sessions, developer, make_account())

    app = dashboard.open("training")
    running = rendered(app)
    assert "Running: refreshed every 3 s." in running
    assert "loading\nepoch 1 loss 0.41" in running and "The last 2 of 2 log lines." in running

    app.selectbox(key="training.job").set_value(jobs[0]).run()

    assert not app.exception and not app.error
    shown = rendered(app)
    assert "epoch 1\nepoch 2\ndone" in shown and "refreshed every" not in shown
    facts = [text.value for text in app.text]  # each fact's value, under its label's caption
    assert developer.user_id in facts and "3" in facts
    assert "Owner" in texts(app.caption) and "Cost" in texts(app.caption)
    links = {button.proto.label: button.proto.url for button in app.get("link_button")}
    assert links["Dagster run"].endswith(f"/runs/run-{jobs[0][-6:].lower()}")
    assert links["MLflow run"].endswith("/#/runs/abc123")

"""notebooks/training_costs.py runs headless on a home whose training jobs were submitted and
settled by goshen.training, and shows their estimates against what they ran and cost."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from goshen import accounts, training
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import (
    Dataset,
    DatasetKind,
    DatasetStatus,
    Role,
    TrainingJob,
    TrainingStatus,
    UsageEvent,
    User,
    utcnow,
)
from tests.fixtures.notebooks import run_notebook, use_home

NOTEBOOK = "training_costs"
PRICE = 100  # micro-credits a second
# (task, dataset, epochs, seconds run, how it ended); datasets: 100 images, 1,000, 5,000 rows.
JOBS = [
    ("diffusion", "small", 10, 6, TrainingStatus.succeeded),  # estimated 4 s
    ("diffusion", "large", 1, 2, TrainingStatus.succeeded),  # estimated 4 s
    ("diffusion", "small", 10, 3, TrainingStatus.canceled),  # by its owner
    ("classification", "table", 20, 30, TrainingStatus.succeeded),  # estimated 20 s
    ("classification", "table", 20, 10, TrainingStatus.failed),
]


def _dataset(user: User, name: str, kind: DatasetKind, **fields: Any) -> Dataset:
    return Dataset(
        user_id=user.id,
        name=name,
        kind=kind,
        status=DatasetStatus.ready,
        storage_prefix=f"datasets/{user.id}/{name}",
        **fields,
    )


def _seed(sessions: sessionmaker[Session]) -> None:
    """JOBS submitted, run and settled as the training pipeline does, and one still queued."""
    with session_scope(sessions) as session:
        user = accounts.create_user(
            session, email="ada@example.com", role=Role.developer, credits_micros=0
        )
        datasets = {
            "small": _dataset(user, "small", DatasetKind.images, file_count=100, size_bytes=10**6),
            "large": _dataset(user, "large", DatasetKind.images, file_count=1000, size_bytes=10**7),
            "table": _dataset(
                user,
                "table",
                DatasetKind.tabular,
                size_bytes=10**5,
                schema={"columns": {"x": "float", "label": "int"}},
                stats={"rows": 5000},
            ),
        }
        session.add_all(datasets.values())
        session.flush()
        for index, (task, dataset, epochs, seconds, status) in enumerate([*JOBS, JOBS[0]]):
            config = {"epochs": epochs, "target": None if task == "diffusion" else "label"}
            job = training.submit(
                session,
                user,
                dataset_id=datasets[dataset].id,
                task=training.Task(task),
                model_name=f"{task[:4]}-{dataset}-{index}",
                config=training.TrainingConfig(**config),
                price_micros_per_second=PRICE,
            )
            if index == len(JOBS):
                continue  # still queued: not ended, not shown
            started = utcnow() - timedelta(hours=1)
            session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job.id)
                .values(status=TrainingStatus.running, started_at=started)
                .values(cancel_requested=status is TrainingStatus.canceled)
            )
            training.finish(
                session,
                job.id,
                status,
                price_micros_per_second=PRICE,
                ended_at=started + timedelta(seconds=seconds),
            )


def test_the_notebook_shows_the_seeded_estimates_and_costs(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(sessions)
    use_home(settings, monkeypatch)

    defs = run_notebook(NOTEBOOK)

    assert defs["ended"].height == 5
    assert defs["metered"].to_dicts() == [{"events": 4, "cost_micros": (6 + 2 + 3 + 30) * PRICE}]
    rows = {(r["task"], r["size"]): r for r in defs["by_task_and_size"].to_dicts()}
    assert set(rows) == {
        ("diffusion", "100 to 1000 samples"),
        ("diffusion", "1000 to 10000 samples"),
        ("classification", "1000 to 10000 samples"),
    }
    small = rows["diffusion", "100 to 1000 samples"]
    assert small["jobs"] == 2 and small["cost_micros"] == 9 * PRICE
    assert small["actual_over_estimate"] == pytest.approx(6 / 4)  # the canceled one left out
    # Held: each job's time limit, twice its estimate plus 300 s, at the price.
    assert small["held_micros"] == 2 * (2 * 4 + 300) * PRICE
    table = rows["classification", "1000 to 10000 samples"]
    assert table["actual_over_estimate"] == pytest.approx(30 / 20)
    assert table["cost_micros"] == 30 * PRICE and table["stopped_at_limit"] == 0
    assert rows["diffusion", "1000 to 10000 samples"]["actual_over_estimate"] == pytest.approx(0.5)


def test_the_notebook_stops_when_a_charge_has_no_usage_event(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(sessions)
    use_home(settings, monkeypatch)
    with session_scope(sessions) as session:
        session.execute(update(UsageEvent).values(cost_micros=UsageEvent.cost_micros + 1))

    with pytest.raises(AssertionError, match="costs differ from their training usage events"):
        run_notebook(NOTEBOOK)


def test_the_notebook_runs_on_a_platform_with_no_training_yet(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_home(settings, monkeypatch)

    defs = run_notebook(NOTEBOOK)

    assert defs["ended"].is_empty() and defs["by_task_and_size"].is_empty()

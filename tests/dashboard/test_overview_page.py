"""Overview: seeded jobs, latencies and spend show as metrics, with the queue by model and the
charts' series; a narrower window leaves out what came before it; a refused key shows the API's
problem instead of the figures."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from dashboard import overview_data
from goshen.db import session_scope
from goshen.db.models import Job, JobStatus, Model, UsageEvent
from tests.dashboard.conftest import Dashboard, texts
from tests.fixtures.accounts import Account


def _seed(sessions: sessionmaker[Session], developer: Account, busy: Model, quiet: Model) -> None:
    """Ten minutes ago: 3 jobs queued for `busy` and 1 for `quiet`, 2 that succeeded (queued
    2 s and 4 s, ran 4 s and 8 s), and 1.75 credits of usage: 4 images and a prediction."""
    at = datetime.now(UTC) - timedelta(minutes=10)

    def job(model: Model, status: JobStatus, **fields: object) -> Job:
        return Job(
            user_id=developer.user_id, model_id=model.id, status=status, created_at=at, **fields
        )

    def succeeded(queued: float, ran: float) -> Job:
        return job(
            busy, JobStatus.succeeded, completed_at=at, queue_seconds=queued, run_seconds=ran
        )

    def usage(kind: str, cost: int, **amount: object) -> UsageEvent:
        return UsageEvent(
            user_id=developer.user_id,
            kind=kind,
            quantity=1,
            unit="image",
            cost_micros=cost,
            created_at=at,
            **amount,
        )

    with session_scope(sessions) as session:
        session.add_all([job(busy, JobStatus.queued) for _ in range(3)])
        session.add_all([job(quiet, JobStatus.queued), succeeded(2.0, 4.0), succeeded(4.0, 8.0)])
        session.add_all(
            [usage("generation", 1_500_000, images=4), usage("prediction", 250_000, seconds=0.2)]
        )


def _metrics(app: object) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}  # type: ignore[attr-defined]


def test_seeded_jobs_latency_and_spend_show_and_a_narrower_window_leaves_them_out(
    dashboard: Dashboard,
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
) -> None:
    busy, quiet = make_model(), make_model()
    _seed(sessions, developer, busy, quiet)

    app = dashboard.open("overview")

    assert not app.error and "Overview" in texts(app.title)
    metrics = _metrics(app)
    assert metrics["Queued"] == "4" and metrics["Succeeded"] == "2" and metrics["Failed"] == "0"
    assert metrics["Queue depth"] == "4"
    assert metrics["Queue time p50"] == "3.0 s" and metrics["Run time p50"] == "6.0 s"
    assert metrics["Predict p95"] == "200 ms"
    assert metrics["Spend in window"] == "1.75"
    assert metrics["Images per minute"] == "0.07"  # 4 images over 60 minutes
    by_model = next(frame.value for frame in app.dataframe)
    assert by_model.values.tolist() == [[busy.name, 3], [quiet.name, 1]]

    app.button_group[0].set_value("5m").run()

    assert not app.exception and not app.error
    metrics = _metrics(app)
    assert metrics["Queued"] == "0" and metrics["Spend in window"] == "0"
    assert metrics["Queue depth"] == "4"  # queued now, whenever submitted


def test_the_series_charts_credits_per_slice(
    dashboard: Dashboard,
    sessions: sessionmaker[Session],
    developer: Account,
    make_model: Callable[..., Model],
) -> None:
    busy = make_model()
    _seed(sessions, developer, busy, busy)

    series = overview_data.series_frame(dashboard.api.admin_stats("1h"))

    assert len(series) == 60 and series.index.is_monotonic_increasing
    busy_slices = series[series["Credits"] > 0]
    assert busy_slices.values.tolist() == [[6, 4, 1, 1.75]]
    assert busy_slices.index[0] <= datetime.now(UTC) - timedelta(minutes=10)


def test_a_revoked_key_shows_the_apis_problem_instead_of_the_figures(
    dashboard: Dashboard,
) -> None:
    app = dashboard.open("overview")
    dashboard.api.admin_revoke_key(dashboard.admin.key_id)

    app.run()

    assert not app.exception and not app.metric
    assert "Reading the platform's stats failed — " in texts(app.error)
    assert "(401)" in texts(app.error)

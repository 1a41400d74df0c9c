"""goshen.analytics: DuckDB tables of the rollups in a local folder or an S3 bucket (moto's), and
of the platform database, on a connection that can read and write no file."""

from __future__ import annotations

import secrets
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from sqlalchemy.orm import Session, sessionmaker

from goshen import accounts, analytics
from goshen.billing.rollups import ROLLUP_SCHEMA, parquet_bytes, usage_daily_key
from goshen.config import Settings
from goshen.db import session_scope
from goshen.db.models import Dataset, DatasetKind, Role, TrainingJob
from goshen.storage.s3 import S3ArtifactStore, make_s3_client
from tests.fixtures.billing_home import seed_billing_home
from tests.fixtures.storage import S3Server


def _rollup(user_id: str, cost: int) -> bytes:
    row = {
        "user_id": user_id,
        "model_id": None,
        "unit": "image",
        "kind": "generation",
        "quantity": 1.0,
        "cost_micros": cost,
        "event_count": 1,
        "job_count": 1,
        "p50_run_seconds": 1.0,
        "p95_run_seconds": 1.0,
    }
    return parquet_bytes(pa.Table.from_pylist([row], schema=ROLLUP_SCHEMA))


def test_views_over_a_seeded_home(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_billing_home(settings, sessions, monkeypatch)
    before = sorted(p.relative_to(settings.home_dir) for p in settings.home_dir.rglob("*"))

    with analytics.connect() as db:  # the GOSHEN_* variables the seed set
        by_day = db.sql(
            "SELECT day, sum(cost_micros) FROM usage_daily GROUP BY day"
            " HAVING sum(cost_micros) > 0 ORDER BY day"
        ).fetchall()
        storage = db.sql("SELECT sum(cost_micros), count(DISTINCT day) FROM storage_daily")
        storage_totals = storage.fetchall()
        invoiced = db.sql("SELECT month, sum(total_micros) FROM invoices GROUP BY ALL ORDER BY 1")
        invoices_by_month = invoiced.fetchall()
        lines = db.sql("SELECT count(*) FROM invoice_lines WHERE category = 'storage'")
        storage_lines = lines.fetchall()
        days = db.sql("SELECT rollup, count(*), min(day) FROM rollup_days GROUP BY 1 ORDER BY 1")
        rolled_up_days = days.fetchall()
        user_columns = {c[0] for c in db.sql("DESCRIBE users").fetchall()}
        job_columns = {c[0]: c[1] for c in db.sql("DESCRIBE jobs").fetchall()}

    assert by_day[0] == (date(2025, 2, 10), 3_000) and len(by_day) == 6
    assert storage_totals == [(100_006, 31)]  # 1 GB all March, a day's share rounded up each day
    assert invoices_by_month == [("2025-02", 4_000), ("2025-03", 125_506)]
    assert storage_lines == [(1,)]
    # Every day of both months was rolled up, the days without usage too.
    assert rolled_up_days == [
        ("storage_daily", 59, date(2025, 2, 1)),
        ("usage_daily", 59, date(2025, 2, 1)),
    ]
    assert "webhook_secret" not in user_columns and "email" in user_columns
    assert {"input", "logs", "claim_token"}.isdisjoint(job_columns)
    assert job_columns["run_seconds"] == "DOUBLE"
    assert job_columns["created_at"] == "TIMESTAMP WITH TIME ZONE"
    after = sorted(p.relative_to(settings.home_dir) for p in settings.home_dir.rglob("*"))
    assert after == before


def test_training_jobs_come_with_their_estimates(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with session_scope(sessions) as session:
        user = accounts.create_user(
            session, email="ada@example.com", role=Role.developer, credits_micros=0
        )
        digits = Dataset(
            user_id=user.id,
            name="digits",
            kind=DatasetKind.images,
            storage_prefix="datasets/digits",
            file_count=50,
        )
        session.add(digits)
        session.flush()
        for dataset_id in (digits.id, None):  # the second one's dataset was deleted
            session.add(
                TrainingJob(
                    user_id=user.id,
                    dataset_id=dataset_id,
                    task="diffusion",
                    model_name="tiny",
                    config={"epochs": 3},
                    logs="epoch 1\n",
                )
            )
            session.flush()

    with analytics.connect(settings, tables=["training_jobs"]) as db:
        columns = {c[0] for c in db.sql("DESCRIBE training_jobs").fetchall()}
        estimates = db.sql(
            "SELECT samples, epochs, estimate_seconds, time_limit_seconds FROM training_estimates"
            " ORDER BY samples NULLS LAST"
        ).fetchall()

    assert "logs" not in columns and {"task", "estimated_cost_micros"} <= columns
    # 0.004 s a sample and epoch for diffusion; the limit twice that plus 300 s to start.
    assert estimates == [(50, 3, pytest.approx(0.6), 302), (None, 3, None, None)]


def test_a_home_without_rollups_answers_empty_views(settings: Settings) -> None:
    with analytics.connect(settings, tables=["users"]) as db:
        empty = {
            name: db.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0]  # noqa: S608  # our names
            for name in ("usage_daily", "storage_daily", "invoice_lines", "rollup_days", "users")
        }
        usage_columns = [c[0] for c in db.sql("DESCRIBE usage_daily").fetchall()]

    assert empty == dict.fromkeys(empty, 0)
    assert usage_columns[:3] == ["day", "user_id", "model_id"]


def test_a_missing_database_is_named_and_not_made(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=tmp_path / "nowhere", secret_key="s" * 32)

    with pytest.raises(FileNotFoundError, match="GOSHEN_HOME"):
        analytics.connect(settings)
    assert not (tmp_path / "nowhere").exists()


def test_an_unknown_table_names_the_tables(settings: Settings) -> None:
    with pytest.raises(ValueError, match="usage_events"):
        analytics.connect(settings, tables=["usage"])


def test_only_the_documented_tables_can_be_read(settings: Settings) -> None:
    with pytest.raises(ValueError, match=r"'api_keys'.*the tables are: users, models"):
        analytics.connect(settings, tables=["users", "api_keys"])


def test_the_connection_can_read_and_write_no_file(
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_billing_home(settings, sessions, monkeypatch)
    rollup = next((settings.artifacts_dir / "billing" / "usage_daily").glob("*.parquet"))
    written = settings.artifacts_dir / "billing" / "x.parquet"

    with analytics.connect() as db:
        with pytest.raises(duckdb.PermissionException):
            db.execute(f"COPY (SELECT 1) TO '{written}'")
        with pytest.raises(duckdb.PermissionException):
            db.execute("SELECT count(*) FROM read_parquet(?)", [str(rollup)]).fetchall()
        with pytest.raises(duckdb.InvalidInputException, match="Cannot change"):
            db.execute("SET enable_external_access = true")
        days = db.sql("SELECT count(*) FROM rollup_days").fetchall()

    assert not written.exists()
    assert days == [(118,)]  # the tables were loaded before the files were shut out


def test_rollups_in_an_s3_bucket(settings: Settings, s3_server: S3Server) -> None:
    s3 = Settings(
        _env_file=None,
        home=settings.home,
        database_url=settings.database_url,
        secret_key=settings.secret_key,
        storage_backend="s3",
        s3_bucket=f"goshen-{secrets.token_hex(4)}",
        s3_prefix="platform",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_region=s3_server.region,
        s3_access_key_id=s3_server.access_key_id,
        s3_secret_access_key=s3_server.secret_access_key,
    )
    client = make_s3_client(s3)
    client.create_bucket(Bucket=s3.s3_bucket)
    store = S3ArtifactStore(s3.s3_bucket or "", s3.s3_prefix, client)
    store.put(usage_daily_key(date(2025, 3, 1)), _rollup("usr_a", 700))
    store.put(usage_daily_key(date(2025, 3, 2)), _rollup("usr_b", 300))
    store.put("billing/usage_daily/notes.txt", b"not a rollup")
    store.put("billing/usage_daily/2025-03-01.backup.parquet", _rollup("usr_c", 1))

    with analytics.connect(s3, tables=["users"]) as db:
        rows = db.sql("SELECT day, user_id, cost_micros FROM usage_daily ORDER BY day").fetchall()
        lines = db.sql("SELECT count(*) FROM invoice_lines").fetchall()[0]
        days = db.sql("SELECT rollup, day FROM rollup_days ORDER BY day").fetchall()

    assert rows == [(date(2025, 3, 1), "usr_a", 700), (date(2025, 3, 2), "usr_b", 300)]
    assert lines == (0,)
    assert days == [("usage_daily", date(2025, 3, 1)), ("usage_daily", date(2025, 3, 2))]

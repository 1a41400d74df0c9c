"""Read-only DuckDB access to the billing rollups and the platform database, for notebooks.

`connect()` answers an in-memory DuckDB connection with these tables, all read when it runs:

- `usage_daily`: `billing/usage_daily/<day>.parquet`, one row per day, user, model, unit and
  kind (quantity, cost_micros, event and job counts, p50/p95 run seconds), with its `day`;
- `storage_daily`: `billing/storage_daily/<day>.parquet`, each user's bytes and their cost per
  day and kind, with its `day`;
- `invoice_lines`: `billing/invoices/<month>/<user id>.parquet`, every invoice's lines;
- `rollup_days`: each day (`rollup`, `day`) a daily rollup was written for, rows or none, so a
  day the schedule missed, or usage that came after its day was rolled up, can be told apart;
- `invoices`, `users`, `models`, `jobs`, `usage_events`, `workers`, `datasets`,
  `training_jobs`: the platform database's tables, only these (JSON columns, secrets and logs
  left out);
- `training_estimates`, with `training_jobs`: what each training job's submission estimated
  (the samples an epoch reads, its epochs, the estimator's seconds and the time limit it held),
  computed by `goshen.training` from the job's config and its dataset, as submit computed it.

Where they are read from is what GOSHEN_* settings say, as for every other process:

- the local store (`GOSHEN_STORAGE_BACKEND=local`): the Parquet files under
  `GOSHEN_STORAGE_PATH` (default `GOSHEN_HOME/artifacts`);
- S3 (`GOSHEN_STORAGE_BACKEND=s3`): the objects under `s3://GOSHEN_S3_BUCKET/GOSHEN_S3_PREFIX/`,
  read through the store's boto3 client into memory (DuckDB never holds the keys);
- the platform database (`GOSHEN_DATABASE_URL`, default SQLite under `GOSHEN_HOME`): read with
  SQLAlchemy on a read-only engine into Arrow, on SQLite and PostgreSQL alike.

Nothing can be written anywhere: once the tables are loaded the connection turns off DuckDB's
external access (no file or URL can be read or written) and locks its configuration, and the
database is opened read-only (a SQLite file that does not exist is an error, not made).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from goshen.config import Settings, StorageBackend, load_settings

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    from sqlalchemy import Connection

    from goshen.storage.s3 import S3ArtifactStore

ROLLUPS = ("usage_daily", "storage_daily")
INVOICE_LINES = "invoice_lines"
# Columns never read: credentials and bulky per-job text (the JSON columns are skipped by type).
PRIVATE_COLUMNS = {
    "users": frozenset({"webhook_secret"}),
    "jobs": frozenset({"logs", "claim_token", "webhook", "idempotency_key", "request_fingerprint"}),
    "training_jobs": frozenset({"logs"}),
}
PLATFORM_TABLES = (
    "users",
    "models",
    "jobs",
    "usage_events",
    "invoices",
    "workers",
    "datasets",
    "training_jobs",
)
_ROLLUP_KEY = re.compile(
    r"billing/(?:(?P<daily>usage_daily|storage_daily)/\d{4}-\d{2}-\d{2}"
    r"|invoices/\d{4}-\d{2}/[^/]+)\.parquet"
)
_DAY_FROM_FILENAME = (
    r"CAST(regexp_extract(filename, '(\d{4}-\d{2}-\d{2})\.parquet$', 1) AS DATE) AS day"
)


def connect(
    settings: Settings | None = None, *, tables: Sequence[str] = PLATFORM_TABLES
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection holding the rollups, the invoices' lines and the platform
    tables `tables`, as the settings (default: GOSHEN_* variables) configure them, that can
    read and write no file."""
    import duckdb

    unknown = [name for name in tables if name not in PLATFORM_TABLES]
    if unknown:
        raise ValueError(
            f"no readable platform table {', '.join(map(repr, unknown))}; "
            f"the tables are: {', '.join(PLATFORM_TABLES)}"
        )
    settings = settings or load_settings()
    connection = duckdb.connect(":memory:")
    try:
        # Days are UTC days, as billing counts them, whatever the machine's time zone.
        connection.execute("SET TimeZone = 'UTC'").fetchall()
        if settings.storage_backend is StorageBackend.s3:
            _load_s3(connection, settings)
        else:
            _load_local(connection, settings.artifacts_dir)
        register_platform_tables(connection, settings, tables)
        # Everything is in memory now: no COPY TO, no read_parquet, no ATTACH from here on.
        connection.execute("SET enable_external_access = false").fetchall()
        connection.execute("SET lock_configuration = true").fetchall()
    except BaseException:
        connection.close()
        raise
    return connection


def register_platform_tables(
    connection: duckdb.DuckDBPyConnection, settings: Settings, tables: Iterable[str]
) -> None:
    """Copy each platform table in `tables` into `connection`, all from one snapshot of the
    database, read on a read-only connection."""
    from sqlalchemy.engine import make_url

    from goshen.db import make_engine

    url = settings.resolved_database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"no platform database at {path}: set GOSHEN_HOME to the platform's home, "
                "or GOSHEN_DATABASE_URL to its database"
            )
    engine = make_engine(url, read_only=True, timeout=settings.dependency_timeout_seconds)
    try:
        with engine.connect() as db:
            if engine.dialect.name == "postgresql":  # one snapshot for all the tables, as SQLite
                db.execution_options(isolation_level="REPEATABLE READ")
            for name in tables:
                connection.from_arrow(read_table(db, name)).create(name)
            if "training_jobs" in tables:
                connection.from_arrow(training_estimates(db)).create("training_estimates")
    finally:
        engine.dispose()


def read_table(db: Connection, name: str) -> pa.Table:
    """A platform table's readable columns (no JSON, no secrets) as Arrow, in primary-key order."""
    import pyarrow as pa
    from sqlalchemy import select

    from goshen.db.models import Base

    table = Base.metadata.tables.get(name)
    if table is None:
        known = ", ".join(sorted(Base.metadata.tables))
        raise ValueError(f"no platform table {name!r}; the tables are: {known}")
    private = PRIVATE_COLUMNS.get(name, frozenset())
    fields = [
        (column, arrow_type)
        for column in table.columns
        if column.name not in private and (arrow_type := _arrow_type(column.type)) is not None
    ]
    query = select(*(column for column, _ in fields)).order_by(*table.primary_key.columns)
    rows = db.execute(query).all()
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(fields)
    return pa.table(
        {
            column.name: pa.array(values, type=arrow_type)
            for (column, arrow_type), values in zip(fields, columns, strict=True)
        }
    )


def training_estimates(db: Connection) -> pa.Table:
    """Each training job's estimate as its submission made it (goshen.training): `samples`,
    `epochs`, `estimate_seconds` and `time_limit_seconds`; nulls where its dataset is gone."""
    import pyarrow as pa
    from sqlalchemy import select

    from goshen import training
    from goshen.db.models import Dataset, TrainingJob

    query = (
        select(TrainingJob.id, TrainingJob.task, TrainingJob.config, Dataset.file_count)
        .add_columns(Dataset.stats)
        .outerjoin(Dataset, Dataset.id == TrainingJob.dataset_id)
        .order_by(TrainingJob.id)
    )
    rows: list[dict[str, Any]] = []
    for job_id, task_name, stored_config, file_count, stats in db.execute(query):
        task, config = training.Task(task_name), training.TrainingConfig(**stored_config)
        row = {"training_job_id": job_id, "epochs": config.epochs}
        if file_count is not None:
            samples = training.samples_in(Dataset(file_count=file_count, stats=stats), task)
            row["samples"] = samples
            row["estimate_seconds"] = training.estimate_seconds(task, config, samples)
            row["time_limit_seconds"] = training.time_limit_seconds(task, config, samples)
        rows.append(row)
    schema = pa.schema(
        [
            ("training_job_id", pa.string()),
            ("samples", pa.int64()),
            ("epochs", pa.int64()),
            ("estimate_seconds", pa.float64()),
            ("time_limit_seconds", pa.int64()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _arrow_type(sql_type: Any) -> pa.DataType | None:
    """The Arrow type a column is read as; None for what a table of scalars cannot hold (JSON)."""
    import pyarrow as pa
    from sqlalchemy import TypeDecorator

    if isinstance(sql_type, TypeDecorator):  # UTCDateTime: a DateTime underneath
        sql_type = sql_type.impl_instance
    try:
        python_type = sql_type.python_type
    except NotImplementedError:
        return None
    arrow: dict[type, pa.DataType] = {
        str: pa.string(),
        int: pa.int64(),
        float: pa.float64(),
        bool: pa.bool_(),
        datetime: pa.timestamp("us", tz="UTC"),
        date: pa.date32(),
    }
    return arrow.get(python_type)


def _load_local(connection: duckdb.DuckDBPyConnection, root: Path) -> None:
    listed = (p.relative_to(root).as_posix() for p in (root / "billing").rglob("*.parquet"))
    found = rollup_keys(listed)
    for name, keys in found.items():
        _load_parquet(connection, name, [str(root / key) for key in keys])
    _load_days(connection, found)


def rollup_keys(listed: Iterable[str]) -> dict[str, list[str]]:
    """The store keys of each rollup's objects among `listed`, sorted: `usage_daily` and
    `storage_daily` named by their day, `invoice_lines` by month and user; others left out."""
    found: dict[str, list[str]] = {name: [] for name in (*ROLLUPS, INVOICE_LINES)}
    for key in sorted(listed):
        if match := _ROLLUP_KEY.fullmatch(key):
            found[match["daily"] or INVOICE_LINES].append(key)
    return found


def _day(key: str) -> date:
    return date.fromisoformat(key.rsplit("/", 1)[1].removesuffix(".parquet"))


def _load_days(connection: duckdb.DuckDBPyConnection, found: dict[str, list[str]]) -> None:
    """`rollup_days`: each day a daily rollup was written for, even one with no rows."""
    import pyarrow as pa

    days = [(name, _day(key)) for name in ROLLUPS for key in found[name]]
    table = pa.table(
        {
            "rollup": pa.array([name for name, _ in days], pa.string()),
            "day": pa.array([day for _, day in days], pa.date32()),
        }
    )
    connection.from_arrow(table).create("rollup_days")


def _load_parquet(connection: duckdb.DuckDBPyConnection, name: str, paths: list[str]) -> None:
    """A table of the Parquet files at `paths`, the daily ones with their `day`; empty, with the
    rollup's columns, when there are none yet."""
    if not paths:
        connection.from_arrow(_empty(name)).create(name)
        return
    relation = connection.read_parquet(paths, filename=True, union_by_name=True)
    day = f"{_DAY_FROM_FILENAME}, " if name in ROLLUPS else ""
    relation.select(f"{day}* EXCLUDE (filename)").create(name)


def _load_s3(connection: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    from goshen.storage.s3 import S3ArtifactStore, make_s3_client

    assert settings.s3_bucket, "Settings refuses the s3 backend without GOSHEN_S3_BUCKET"
    store = S3ArtifactStore(settings.s3_bucket, settings.s3_prefix, make_s3_client(settings))
    found = rollup_keys(info.key for info in store.list("billing"))
    for name, keys in found.items():
        connection.from_arrow(_read_objects(store, name, keys)).create(name)
    _load_days(connection, found)


def _read_objects(store: S3ArtifactStore, name: str, keys: list[str]) -> pa.Table:
    """The objects at `keys` read whole through the store's client, as one table (with `day`
    for the daily rollups, taken from each object's name as for local files)."""
    import pyarrow as pa

    from goshen.billing.rollups import read_parquet

    if not keys:
        return _empty(name)
    tables = []
    for key in keys:
        table = read_parquet(store.get(key))
        if name in ROLLUPS:
            day = pa.array([_day(key)] * table.num_rows, pa.date32())
            table = table.add_column(0, "day", day)
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default")


def _empty(name: str) -> pa.Table:
    import pyarrow as pa

    from goshen.billing.invoices import LINES_SCHEMA
    from goshen.billing.rollups import ROLLUP_SCHEMA
    from goshen.billing.storage_usage import STORAGE_SCHEMA

    schemas = {"usage_daily": ROLLUP_SCHEMA, "storage_daily": STORAGE_SCHEMA}
    schema = schemas.get(name)
    if schema is None:
        return LINES_SCHEMA.empty_table()
    return schema.insert(0, pa.field("day", pa.date32())).empty_table()

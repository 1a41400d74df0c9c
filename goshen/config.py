"""Platform settings: every knob comes from a GOSHEN_* environment variable or a .env file."""

from __future__ import annotations

import re
import secrets
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GOSHEN_"
Port = Annotated[int, Field(ge=1, le=65535)]
# SQLAlchemy's URL grammar up to `://`: the backend, then an optional `+driver`. Checked here
# without SQLAlchemy so that settings load in installs that never open the database.
_DATABASE_URL_SCHEME = re.compile(r"([\w+]+)://")
# A rate limit: a quota per window of `multiple` units ("600/minute", "100 per 10 seconds"), the
# single-limit subset of the `limits` library's notation, checked here without it.
RATE_LIMIT = re.compile(
    r"(?P<quota>\d{1,9})\s*(?:/|per)\s*(?P<multiple>\d{1,6})?\s*"
    r"(?P<unit>second|minute|hour|day)s?"
)


class Environment(StrEnum):
    development = "development"
    production = "production"


class StorageBackend(StrEnum):
    local = "local"
    s3 = "s3"


class DiffusionEngine(StrEnum):
    onnx = "onnx"
    torch = "torch"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class TracesExporter(StrEnum):
    none = "none"
    otlp = "otlp"
    console = "console"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it and says what to fix."""


class Settings(BaseSettings):
    """Goshen's configuration. Defaults are the embedded single-machine setup."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    env: Environment = Environment.development
    home: Path = Path(".goshen")
    database_url: str | None = None
    secret_key: str | None = Field(default=None, min_length=32, repr=False)
    log_level: str = "INFO"
    # "text" for people; "json": one object a line, with request_id and job_id, for collectors.
    log_format: LogFormat = LogFormat.text
    # OpenTelemetry spans of submit, claim, run and deliver: "otlp" sends them where the
    # OTEL_EXPORTER_OTLP_* variables say (pip install 'goshen[otel]'), "console" prints them.
    traces_exporter: TracesExporter = TracesExporter.none
    # Where `goshen worker` serves its Prometheus metrics (0: not served); `--gpus` adds the
    # GPU's position in the list, one port per worker.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    host: str = "127.0.0.1"
    api_port: Port = 8000
    mlflow_port: Port = 5000
    dagster_port: Port = 3000
    dashboard_port: Port = 8501
    # The admin key the dashboard signs in with when a browser session has typed none; unset:
    # the key file `goshen demo` writes (GOSHEN_HOME/demo-admin-key) if there is one.
    dashboard_api_key: str | None = Field(default=None, repr=False)
    public_url: str | None = None

    storage_backend: StorageBackend = StorageBackend.local
    storage_path: Path | None = None
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = Field(default=None, repr=False)
    signed_url_ttl_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)

    max_upload_bytes: int = Field(default=200 * 1024**2, ge=1)
    max_request_bytes: int = Field(default=1024**2, ge=1024)
    max_archive_entries: int = Field(default=20_000, ge=1)
    max_uncompressed_bytes: int = Field(default=1024**3, ge=1)
    max_compression_ratio: int = Field(default=100, ge=1)
    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    max_table_rows: int = Field(default=1_000_000, ge=1)
    max_table_columns: int = Field(default=1000, ge=1)

    mlflow_tracking_uri: str | None = None
    mlflow_backend_store_uri: str | None = None
    mlflow_artifacts_destination: str | None = None
    dagster_home: Path | None = None
    # Where people open the Dagster and MLflow UIs (links on training jobs); default: the
    # embedded Dagster, the tracking server (without any credentials in its URI).
    dagster_url: str | None = None
    mlflow_url: str | None = None
    mlflow_workers: int = Field(default=1, ge=1, le=64)

    training_price_micros_per_second: int = Field(default=100, ge=0)
    # What calls to customers' trained models cost (the operator's price; owners set none).
    trained_model_image_price_micros: int = Field(default=1_000, ge=0, le=10**12)
    trained_model_request_price_micros: int = Field(default=100, ge=0, le=10**12)
    # Off: a deployment without credits; usage is metered, nothing is held, charged or refused.
    billing_enabled: bool = True
    # The most credit one API process holds at a time for one key's /predict requests.
    predict_credit_chunk_micros: int = Field(default=1_000_000, ge=1, le=10**12)
    # Storage per GB (10^9 bytes) kept a month, charged when the month's invoice is finalized.
    storage_price_datasets_micros_per_gb_month: int = Field(default=100_000, ge=0)
    storage_price_models_micros_per_gb_month: int = Field(default=150_000, ge=0)
    invoice_grace_days: int = Field(default=3, ge=0, le=27)
    # Credits (not micro-credits) every new user is granted; at most 6 decimal places.
    new_user_credits: Decimal = Field(default=Decimal(10), ge=0, le=10**9, decimal_places=6)
    # The signing secret of the Stripe webhook endpoint that sends top-ups; unset: no top-ups.
    stripe_webhook_secret: str | None = Field(default=None, repr=False)

    worker_heartbeat_seconds: float = Field(default=5.0, gt=0, le=300)
    worker_max_batch_size: int = Field(default=8, ge=1, le=64)
    worker_batch_wait_seconds: float = Field(default=0.0, ge=0, le=10)
    # A worker whose last batches of a model ran fast claims that model's next batches with a
    # full one, as many as it expects to run in this long; 0: one batch per claim.
    worker_prefetch_seconds: float = Field(default=0.05, ge=0, le=10)
    worker_model_cache_size: int = Field(default=2, ge=1, le=64)
    # How long a queued job waits for a worker that has its model loaded; 0: no affinity.
    worker_affinity_seconds: float = Field(default=2.0, ge=0, le=60)
    worker_drain_seconds: float = Field(default=10.0, ge=0, le=3600)
    diffusion_engine: DiffusionEngine = DiffusionEngine.onnx

    queue_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    job_lease_seconds: float = Field(default=30.0, ge=1, le=3600)
    queue_recovery_seconds: float = Field(default=5.0, gt=0, le=3600)
    job_max_attempts: int = Field(default=3, ge=1, le=20)
    job_retry_base_seconds: float = Field(default=2.0, ge=0, le=3600)
    job_timeout_seconds: float = Field(default=600.0, gt=0, le=24 * 3600)
    max_active_jobs_per_user: int = Field(default=100, ge=1)
    # Requests one account may have in progress at once in one API process; more answer 429.
    max_requests_in_flight_per_account: int = Field(default=8, ge=1, le=10_000)

    # Rate limits, each "<quota>/<window>" (serving.http.rate_limits): per API key and route
    # class, and failed authentications per client address. Off: nothing is counted.
    rate_limits_enabled: bool = True
    rate_limit_generate: str = "600/minute"
    rate_limit_predict: str = "60000/minute"
    rate_limit_default: str = "3000/minute"
    rate_limit_failed_auth: str = "30/minute"
    # Where every API process keeps the counts (unset: each process in its own memory).
    redis_url: str | None = None
    redis_key_prefix: str = Field(default="goshen", pattern=r"^[\w.:-]{1,64}$")
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=10)

    predict_max_batch_size: int = Field(default=64, ge=1, le=4096)
    predict_max_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    predict_max_rows: int = Field(default=1024, ge=1)
    max_model_upload_bytes: int = Field(default=256 * 1024**2, ge=1)
    # The checker itself needs about 200 MiB before it reads the model.
    model_validation_memory_bytes: int = Field(default=4 * 1024**3, ge=512 * 1024**2)
    model_validation_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)

    # How long one call to a dependency (registry, artifact store, database) may take before the
    # work that needed it fails, naming the dependency.
    dependency_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    webhook_allow_loopback: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # Deliveries one dispatcher has in flight at once, and to one receiver (scheme, host, port).
    webhook_concurrency: int = Field(default=32, ge=1, le=1024)
    webhook_concurrency_per_receiver: int = Field(default=4, ge=1, le=1024)
    # The wait after a delivery's first failed attempt; later ones keep the Standard Webhooks
    # schedule's proportions (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h at the default).
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0, le=3600)
    shutdown_grace_seconds: float = Field(default=20.0, gt=0, le=600)
    # The API's connections: time to receive a request's headers, and connections per address.
    api_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    api_max_connections_per_client: int = Field(default=256, ge=1, le=100_000)
    startup_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)

    @field_validator("database_url")
    @classmethod
    def _database_url_is_supported(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = _DATABASE_URL_SCHEME.match(value)
        if scheme is None:
            raise ValueError(
                "is not a database URL; expected e.g. postgresql+psycopg://user@host:5432/goshen "
                "or sqlite:///path/to/goshen.db"
            )
        backend = scheme.group(1).split("+")[0]
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"uses {backend!r}; Goshen runs on 'postgresql' or 'sqlite'")
        return value

    @field_validator(
        "public_url", "s3_endpoint_url", "mlflow_tracking_uri", "dagster_url", "mlflow_url"
    )
    @classmethod
    def _is_http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator(
        "rate_limit_generate", "rate_limit_predict", "rate_limit_default", "rate_limit_failed_auth"
    )
    @classmethod
    def _is_rate_limit(cls, value: str) -> str:
        rate = RATE_LIMIT.fullmatch(value.strip().lower())
        if rate is None or int(rate.group("quota")) < 1 or int(rate.group("multiple") or 1) == 0:
            raise ValueError(
                f"{value!r} is not a rate limit; write '<quota>/<window>' with a quota of at "
                "least 1, such as 600/minute, 100/10 seconds or 5000 per hour"
            )
        return value.strip().lower()

    @field_validator("redis_url")
    @classmethod
    def _is_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "must start with redis://, rediss:// or unix://, e.g. redis://127.0.0.1:6379/0"
            )
        return value or None

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("stripe_webhook_secret")
    @classmethod
    def _is_stripe_signing_secret(cls, value: str | None) -> str | None:
        if not value:
            return None  # set but empty, as a deployment template leaves it: no top-ups
        if not re.fullmatch(r"whsec_\S+", value):
            raise ValueError(
                "must be the signing secret of your Stripe webhook endpoint, which starts with "
                "whsec_ (Stripe Dashboard: Developers, Webhooks, the endpoint, Signing secret); "
                "not an API key"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.storage_backend is StorageBackend.s3 and not self.s3_bucket:
            raise ValueError("GOSHEN_S3_BUCKET is required when GOSHEN_STORAGE_BACKEND=s3")
        if self.worker_drain_seconds >= self.shutdown_grace_seconds:
            raise ValueError(
                "GOSHEN_WORKER_DRAIN_SECONDS must be shorter than GOSHEN_SHUTDOWN_GRACE_SECONDS, "
                "so a stopping worker releases its jobs before it is killed"
            )
        if self.env is Environment.production:
            if self.webhook_allow_loopback:
                raise ValueError(
                    "GOSHEN_WEBHOOK_ALLOW_LOOPBACK is for local development and tests; "
                    "it is refused when GOSHEN_ENV=production"
                )
            if self.secret_key is None:
                raise ValueError("GOSHEN_SECRET_KEY is required when GOSHEN_ENV=production")
            if self.database_url is None or self.database_url.startswith("sqlite"):
                raise ValueError(
                    "GOSHEN_DATABASE_URL must point at PostgreSQL when GOSHEN_ENV=production"
                )
        ports = {
            "GOSHEN_API_PORT": self.api_port,
            "GOSHEN_MLFLOW_PORT": self.mlflow_port,
            "GOSHEN_DAGSTER_PORT": self.dagster_port,
            "GOSHEN_DASHBOARD_PORT": self.dashboard_port,
        }
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"service ports must differ, got {ports}")
        return self

    @cached_property
    def new_user_credits_micros(self) -> int:
        return int(self.new_user_credits * 1_000_000)

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'goshen.db'}"

    @cached_property
    def artifacts_dir(self) -> Path:
        return (self.storage_path or self.home_dir / "artifacts").expanduser().resolve()

    @cached_property
    def api_url(self) -> str:
        """Where clients reach the API; signed download URLs start with it."""
        return self.public_url or f"http://{_url_host(self.host)}:{self.api_port}"

    @property
    def demo_admin_key_file(self) -> Path:
        """Where `goshen demo` keeps its admin's key (0600), which the dashboard signs in with."""
        return self.home_dir / "demo-admin-key"

    def local_url(self, port: int) -> str:
        """Where a service bound to GOSHEN_HOST on `port` answers on this machine."""
        return f"http://{_url_host(self.host)}:{port}"

    @cached_property
    def resolved_mlflow_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{_url_host(self.host)}:{self.mlflow_port}"

    @cached_property
    def resolved_mlflow_backend_store_uri(self) -> str:
        default = f"sqlite:///{self.home_dir / 'mlflow' / 'mlflow.db'}"
        return self.mlflow_backend_store_uri or default

    @cached_property
    def resolved_mlflow_artifacts_destination(self) -> str:
        return self.mlflow_artifacts_destination or str(self.home_dir / "mlflow" / "artifacts")

    @property
    def resolved_dagster_url(self) -> str:
        return self.dagster_url or f"http://{_url_host(self.host)}:{self.dagster_port}"

    @cached_property
    def resolved_dagster_home(self) -> Path:
        return (self.dagster_home or self.home_dir / "dagster").expanduser().resolve()

    @cached_property
    def signing_key(self) -> bytes:
        """Key for HMAC-signed local download URLs, shared by every process of one install."""
        if self.secret_key is not None:
            return self.secret_key.encode()
        return _development_secret(self.home_dir).encode()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):  # noqa: S104 - binding everywhere; clients still use loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _development_secret(home: Path) -> str:
    """A random secret kept under GOSHEN_HOME, made once, so restarts keep URLs valid."""
    path = home / "secret_key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        candidate = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        candidate.write_text(secrets.token_urlsafe(48))
        candidate.chmod(0o600)
        try:
            path.hardlink_to(candidate)
        except FileExistsError:
            pass  # another process made it first; theirs wins
        finally:
            candidate.unlink()
    return path.read_text().strip()


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning a validation failure into one line that names the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["loc"]:
        name = ENV_PREFIX + str(first["loc"][0]).upper()
        return f"invalid setting {name}: {message}"
    return f"invalid settings: {message}"

"""Shared fixtures: settings on a temporary GOSHEN_HOME, and databases on SQLite and PostgreSQL.

Any test that asks for `database_url` (directly or through `settings`, `client`, ...) runs once per
backend. PostgreSQL tests get their own database, cloned from a migrated template. When PostgreSQL
does not answer, its runs are skipped locally; under CI=true that is a failure.
"""

from __future__ import annotations

import hmac
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import psycopg
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from fastapi.testclient import TestClient
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from goshen import accounts
from goshen.config import Settings
from goshen.db import make_engine, make_sessionmaker, migrate, session_scope
from goshen.db.models import Role

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ["sqlite", "postgresql"]


def pytest_configure(config: pytest.Config) -> None:
    # Tests build their own settings; a developer's GOSHEN_* variables must not leak in.
    for name in [n for n in os.environ if n.startswith("GOSHEN_")]:
        if name != "GOSHEN_TEST_DATABASE_URL":
            del os.environ[name]


@dataclass
class Postgres:
    """A reachable PostgreSQL server the tests may create databases on."""

    admin_url: str

    def url_for(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(False)

    def execute(self, statement: str) -> None:
        with psycopg.connect(_libpq(self.admin_url), autocommit=True) as connection:
            connection.execute(statement)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _answers(url: str) -> bool:
    try:
        psycopg.connect(_libpq(url), connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def _start_local_postgres() -> None:
    """Start the machine's PostgreSQL cluster if it is installed but stopped."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return
    for version in os.listdir("/etc/postgresql"):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
        )


@pytest.fixture(scope="session")
def postgres() -> Postgres | None:
    url = os.environ.get("GOSHEN_TEST_DATABASE_URL", DEFAULT_POSTGRES_URL)
    if not _answers(url):
        _start_local_postgres()
    if _answers(url):
        return Postgres(url)
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL does not answer at {url}; under CI the PostgreSQL runs must run")
    return None


@pytest.fixture(scope="session")
def postgres_template(postgres: Postgres | None) -> Iterator[str | None]:
    """A database migrated to head that each test's database is cloned from."""
    if postgres is None:
        yield None
        return
    name = f"goshen_template_{os.getpid()}_{secrets.token_hex(3)}"
    postgres.execute(f'CREATE DATABASE "{name}"')
    migrate.upgrade(postgres.url_for(name))
    yield name
    postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_postgres(postgres: Postgres, template: str | None) -> Iterator[str]:
    name = f"goshen_test_{secrets.token_hex(6)}"
    clause = f' TEMPLATE "{template}"' if template else ""
    postgres.execute(f'CREATE DATABASE "{name}"{clause}')
    try:
        yield postgres.url_for(name)
    finally:
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, postgres: Postgres | None) -> str:
    if request.param == "postgresql" and postgres is None:
        pytest.skip("PostgreSQL is not reachable (set GOSHEN_TEST_DATABASE_URL)")
    return request.param


@pytest.fixture
def database_url(
    backend: str, tmp_path: Path, postgres: Postgres | None, postgres_template: str | None
) -> Iterator[str]:
    """A migrated, empty platform database of each backend."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'goshen.db'}"
        migrate.upgrade(url)
        yield url
        return
    assert postgres is not None
    yield from _fresh_postgres(postgres, postgres_template)


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path, postgres: Postgres | None) -> Iterator[str]:
    """A database of each backend with no schema at all, for migration tests."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    assert postgres is not None
    yield from _fresh_postgres(postgres, None)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        home=tmp_path / "home",
        database_url=database_url,
        secret_key=secrets.token_urlsafe(32),
    )


@pytest.fixture
def sessions(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.resolved_database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from serving.app import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def live_api(settings: Settings) -> Iterator[Settings]:
    """The API served by a real uvicorn on a free loopback port; returns settings pointing at it."""
    import threading

    import uvicorn

    from serving.app import create_app

    port = _free_port()
    served = Settings(**{**settings.model_dump(), "api_port": port, "_env_file": None})
    server = uvicorn.Server(
        uvicorn.Config(create_app(served), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield served
    server.should_exit = True
    thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, local artifacts) on loopback; its URI."""
    from goshen.tracking import running_tracking_server

    home = tmp_path_factory.mktemp("mlflow-home")
    settings = Settings(_env_file=None, home=home, mlflow_port=_free_port())
    with running_tracking_server(settings) as uri:
        yield uri


@dataclass
class Account:
    user_id: str
    key_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def make_account(sessions):  # type: ignore[no-untyped-def]
    """Factory: a user of the given role with one key (all the role's scopes by default)."""

    def make(role: Role = Role.developer, scopes: list[str] | None = None) -> Account:
        with session_scope(sessions) as session:
            user = accounts.create_user(
                session, email=f"{secrets.token_hex(4)}@example.com", role=role
            )
            key, plaintext = accounts.issue_key(session, user, name="test", scopes=scopes)
            return Account(user.id, key.id, plaintext)

    return make


@pytest.fixture
def admin(make_account) -> Account:  # type: ignore[no-untyped-def]
    return make_account(Role.admin)


@pytest.fixture
def developer(make_account) -> Account:  # type: ignore[no-untyped-def]
    return make_account(Role.developer)


# A real S3-compatible server on loopback (moto's server mode), for storage and IO tests.
Environ = dict[str, Any]
_ACCESS_KEY_ID = "goshen-test"
_SECRET_ACCESS_KEY = "goshen-test-secret"


@dataclass(frozen=True)
class S3Server:
    """Where the loopback server listens, and the dummy credentials the tests sign with."""

    endpoint_url: str
    region: str = "us-east-1"
    access_key_id: str = _ACCESS_KEY_ID
    secret_access_key: str = _SECRET_ACCESS_KEY


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1 at a free port, checking presigned URLs the way S3 does."""
    credentials = Credentials(_ACCESS_KEY_ID, _SECRET_ACCESS_KEY)
    app = _checking_presigned_urls(DomainDispatcherApplication(create_backend_app), credentials)
    # ThreadedMotoServer's own setup, with the presigned-URL check wrapped around its app.
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield S3Server(f"http://127.0.0.1:{server.server_port}")
    server.shutdown()
    thread.join()


def _checking_presigned_urls(app: Any, credentials: Credentials) -> Any:
    """Answer 403 to a presigned URL that is expired or badly signed.

    moto serves presigned URLs without checking them; AWS, MinIO and R2 check both.
    """

    def guarded(environ: Environ, start_response: Any) -> Iterable[bytes]:
        problem = _presigned_url_problem(environ, credentials)
        if problem is None:
            return app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "application/xml")])
        return [f"<Error><Code>AccessDenied</Code><Message>{problem}</Message></Error>".encode()]

    return guarded


def _presigned_url_problem(environ: Environ, credentials: Credentials) -> str | None:
    path, _, query = environ["RAW_URI"].partition("?")
    params = dict(parse_qsl(query))
    if "X-Amz-Signature" not in params:
        return None
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if datetime.now(UTC) > signed_at + timedelta(seconds=int(params["X-Amz-Expires"])):
        return "Request has expired"
    expected = _sigv4_query_signature(environ, path, query, params, credentials)
    if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
        return "The request signature we calculated does not match the signature you provided"
    return None


def _sigv4_query_signature(
    environ: Environ, path: str, query: str, params: dict[str, str], credentials: Credentials
) -> str:
    """Recompute the SigV4 query signature with botocore's own signer."""
    unsigned = "&".join(p for p in query.split("&") if not p.startswith("X-Amz-Signature="))
    host = environ["HTTP_HOST"]
    request = AWSRequest(
        method=environ["REQUEST_METHOD"],
        url=f"http://{host}{path}?{unsigned}",
        headers={"host": host},
    )
    request.context["timestamp"] = params["X-Amz-Date"]
    region = params["X-Amz-Credential"].split("/")[2]
    auth = S3SigV4QueryAuth(credentials, "s3", region, expires=int(params["X-Amz-Expires"]))
    string_to_sign = auth.string_to_sign(request, auth.canonical_request(request))
    return auth.signature(string_to_sign, request)

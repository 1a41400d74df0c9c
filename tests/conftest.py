"""Shared fixtures: settings on a temporary GOSHEN_HOME, and databases on SQLite and PostgreSQL.

Any test that asks for `database_url` (directly or through `settings`, `client`, ...) runs once per
backend. PostgreSQL tests get their own database, cloned from a migrated template. When PostgreSQL
does not answer, its runs are skipped locally; under CI=true that is a failure.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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
from goshen.storage import make_store
from serving.jobs.effects import JobEffects

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
def job_effects(settings: Settings) -> JobEffects:
    """What job transitions cause, with webhook links to this test's store and API URL."""
    return JobEffects(make_store(settings), settings.api_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from serving.app import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def live_api(settings: Settings) -> Iterator[Settings]:
    """The API served by a real uvicorn on a free loopback port; returns settings pointing at it."""
    with serve_api(settings) as served:
        yield served


@pytest.fixture
def run_api():  # type: ignore[no-untyped-def]
    """`with run_api(settings) as served:` the API on uvicorn with those settings."""
    return serve_api


@contextmanager
def serve_api(settings: Settings) -> Iterator[Settings]:
    """Serve the API with a real uvicorn on a free loopback port, in a thread, for the block."""
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
    try:
        yield served
    finally:
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


# A Stable Diffusion pipeline with random weights, built here: nothing comes from a model hub.
_CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _byte_level_characters() -> list[str]:
    """The 256 printable stand-ins byte-level BPE (GPT-2, CLIP) uses for the bytes 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    characters, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            characters.append(chr(byte))
        else:
            characters.append(chr(256 + shifted))
            shifted += 1
    return characters


def _tiny_clip_tokenizer(folder: Path) -> Any:
    """A CLIPTokenizer over single bytes (no merges): every text tokenizes, one token a byte."""
    from transformers import CLIPTokenizer

    characters = _byte_level_characters()
    tokens = [*characters, *(f"{c}</w>" for c in characters), *_CLIP_SPECIAL_TOKENS]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True, model_max_length=77)


@pytest.fixture(scope="session")
def tiny_sd_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved StableDiffusionPipeline (safetensors) with random weights; its folder.

    Small enough that a 64x64, 2-step image takes a few hundredths of a second on one core.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("tiny-sd")
    tokenizer = _tiny_clip_tokenizer(root / "tokenizer-files")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            projection_dim=16,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = root / "pipeline"
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


# Serving: a tiny digits model with random weights in a real MLflow registry, catalog entries,
# and workers running in threads against the test database.
TINY_DIGITS = {
    "image_size": 8,
    "block_out_channels": (8, 16),
    "norm_num_groups": 4,
    "num_inference_steps": 4,
}


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str


def register_tiny_digits(tracking_uri: str, name: str) -> RegisteredModel:
    """A class-conditional UNet with random weights, exported and registered as a new version
    of `name` (ONNX with its PyTorch weights beside it), and aliased `production`."""
    import mlflow
    import onnx
    import torch

    from goshen import registry
    from goshen.runtimes.diffusion import DiffusionModelSpec
    from goshen_pipelines.lib import export, publishing
    from goshen_pipelines.lib.diffusion import DiffusionConfig, build_unet, noise_scheduler_config

    config = DiffusionConfig(**TINY_DIGITS)
    torch.manual_seed(0)
    unet = build_unet(config, num_class_embeds=11).eval()
    spec = DiffusionModelSpec(
        image_size=8,
        num_classes=10,
        scheduler_config=noise_scheduler_config(config),
        null_class=10,
        guidance_scale=2.0,
        num_inference_steps=config.num_inference_steps,
    )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("serving-tests")
    with tempfile.TemporaryDirectory() as workdir, mlflow.start_run():
        path = export.export_denoiser(unet, Path(workdir) / "model.onnx", num_classes=11)
        version = registry.log_onnx_model(
            onnx.load(str(path)),
            name,
            metadata={"kind": "diffusion", "diffusion": spec.to_dict()},
            # A metric every trained version beats, so real training still promotes over it.
            tags={registry.CHECKS_TAG: "true", registry.METRIC_TAG: "0.0"},
            extra_files=publishing.torch_weights(unet, Path(workdir)),
        )
    mlflow.MlflowClient().set_registered_model_alias(name, registry.PRODUCTION, version.version)
    return RegisteredModel(name, version.version)


@pytest.fixture(scope="session")
def register_digits(mlflow_server: str) -> Callable[[str], RegisteredModel]:
    """`register_digits(name)`: a tiny random digits model as a new live version of `name`."""
    return lambda name: register_tiny_digits(mlflow_server, name)


@pytest.fixture(scope="session")
def tiny_digits(mlflow_server: str) -> RegisteredModel:
    return register_tiny_digits(mlflow_server, f"tiny-digits-{secrets.token_hex(3)}")


@pytest.fixture
def serving_settings(settings: Settings, mlflow_server: str) -> Settings:
    """Settings with the test MLflow server, short leases and loopback webhooks."""
    return Settings(
        **{
            **settings.model_dump(),
            "_env_file": None,
            "mlflow_tracking_uri": mlflow_server,
            "webhook_allow_loopback": True,
            "job_lease_seconds": 3,
            "queue_recovery_seconds": 0.5,
            "queue_poll_seconds": 0.1,
            "job_retry_base_seconds": 0.1,
            "worker_heartbeat_seconds": 0.5,
        }
    )


@pytest.fixture
def make_model(sessions):  # type: ignore[no-untyped-def]
    """Factory: a public digits catalog entry following `registered_model`, priced per image."""

    from goshen import catalog, registry
    from goshen.db.models import Model, ModelRuntime, ModelStatus, PricingUnit, Visibility

    def make(registered_model: str = "not-in-any-registry", version: str | None = "1") -> Model:
        model = catalog.generation_entry(
            f"digits-{secrets.token_hex(3)}",
            ModelRuntime.onnx_diffusion,
            registered_model,
            alias=registry.PRODUCTION,
            live_version=version,
            pricing_unit=PricingUnit.image,
            price_micros=1000,
            visibility=Visibility.public,
            status=ModelStatus.ready,
        )
        with session_scope(sessions) as session:
            session.add(model)
        return model

    return make


@pytest.fixture
def catalog_model(make_model):  # type: ignore[no-untyped-def]
    """A catalog entry for tests that never run its model (no registry behind it)."""
    return make_model()


@pytest.fixture
def digits_model(make_model, tiny_digits: RegisteredModel):  # type: ignore[no-untyped-def]
    """A catalog entry serving the tiny digits model from the test MLflow server."""
    return make_model(tiny_digits.name, tiny_digits.version)


class SlowSteps:
    """The registry's models with a pause after every denoising step, so a test can act while
    a job runs however fast this machine is (the model and the worker are the real ones)."""

    def __init__(self, source: Any, seconds: float) -> None:
        self.source = source
        self.seconds = seconds

    def resolve(self, model: Any) -> str:
        return self.source.resolve(model)

    def load(self, model: Any, version: str) -> Any:
        generator = self.source.load(model, version)
        pause = self.seconds

        class Slowed:
            device = generator.device

            def generate(self, inputs, on_step):  # type: ignore[no-untyped-def]
                def slow(step: int, total: int):  # type: ignore[no-untyped-def]
                    time.sleep(pause)
                    return on_step(step, total)

                return generator.generate(inputs, slow)

            def close(self) -> None:
                generator.close()

        return Slowed()


@pytest.fixture
def start_worker(serving_settings: Settings) -> Iterator[Callable[..., threading.Event]]:
    """Start `goshen worker`'s loop in a thread; stopped (and joined) after the test.

    `step_seconds` pauses after each denoising step (see SlowSteps)."""
    from serving.worker.generator_cache import RegistrySource
    from serving.worker.loop import run_worker

    running: list[tuple[threading.Thread, threading.Event]] = []

    def start(step_seconds: float = 0, **overrides: object) -> threading.Event:
        settings = Settings(**{**serving_settings.model_dump(), "_env_file": None, **overrides})
        stop = threading.Event()
        source = RegistrySource(settings)
        if step_seconds:
            source = SlowSteps(source, step_seconds)  # type: ignore[assignment]
        thread = threading.Thread(target=run_worker, args=(settings, stop, source), daemon=True)
        thread.start()
        running.append((thread, stop))
        return stop

    yield start
    for _, stop in running:
        stop.set()
    for thread, _ in running:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a worker did not stop"


def register_tiny_classifier(tracking_uri: str, name: str, seed: int = 0) -> RegisteredModel:
    """A digits-shaped classifier (features float32 [B, 64] -> probabilities [B, 10]) with random
    weights, exported to ONNX and registered as a new version of `name`."""
    import mlflow
    import numpy as np
    import onnx
    import torch

    from goshen import registry
    from goshen_pipelines.lib import export

    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    module = torch.nn.Sequential(module, torch.nn.Softmax(dim=1)).eval()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("serving-tests")
    features = np.random.default_rng(seed).random((3, 64), dtype=np.float32)
    metadata = {
        "kind": "onnx",
        "task": "classification",
        "classes": [str(digit) for digit in range(10)],
        "input_ranges": {"features": [0.0, 1.0]},
    }
    with tempfile.TemporaryDirectory() as workdir, mlflow.start_run():
        path = export.export_onnx(
            module, Path(workdir) / "model.onnx", {"features": features}, "probabilities"
        )
        version = registry.log_onnx_model(
            onnx.load(str(path)), name, metadata=metadata, tags={registry.CHECKS_TAG: "true"}
        )
    mlflow.MlflowClient().set_registered_model_alias(name, registry.PRODUCTION, version.version)
    return RegisteredModel(name, version.version)


@pytest.fixture(scope="session")
def register_classifier(mlflow_server: str) -> Callable[..., RegisteredModel]:
    """`register_classifier(name, seed=0)`: a tiny random classifier as a new live version."""
    return lambda name, seed=0: register_tiny_classifier(mlflow_server, name, seed)


def _tiny_onnx(path: Path, *, domain: str = "", external: str | None = None) -> Path:
    """y = x · W (x float32 [B, 2], W 2x3), saved at `path`; `domain` puts MatMul in another op
    domain, `external` stores W as external data at that location."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "W")
    if external is not None:
        weights.ClearField("raw_data")
        weights.data_location = TensorProto.EXTERNAL
        weights.external_data.add(key="location", value=external)
        weights.external_data.add(key="offset", value="0")
        weights.external_data.add(key="length", value="24")
    node = helper.make_node("MatMul", ["x", "W"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weights],
    )
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def tiny_onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid two-input-feature ONNX model with no metadata: what a user might upload."""
    return _tiny_onnx(tmp_path_factory.mktemp("tiny-onnx") / "model.onnx")


@pytest.fixture(scope="session")
def bad_onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX files an upload must refuse: external data outside their folder, a custom op domain."""
    root = tmp_path_factory.mktemp("bad-onnx")
    (root / "secret.bin").write_bytes(bytes(24))
    (root / "model").mkdir()
    return {
        "external-data-outside": _tiny_onnx(
            root / "model" / "outside.onnx", external="../secret.bin"
        ),
        "custom-domain": _tiny_onnx(root / "model" / "custom.onnx", domain="com.example"),
    }

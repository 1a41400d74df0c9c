"""deploy/docker-compose.yml: valid against the compose spec and true to the production shape.

CI has no Docker, so nothing here starts a container: the file is checked against the
compose-spec JSON Schema (check-jsonschema, the `dev` extra's) and loaded with PyYAML (anchors and
merge keys resolved, as Compose does) to check what the stack must hold together.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster._core.instance.ref import InstanceRef

from goshen.config import ENV_PREFIX, Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_TEXT = COMPOSE_FILE.read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ENV_EXAMPLE = (DEPLOY / ".env.example").read_text()
SETTINGS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}

# `${NAME}`, `${NAME:-default}`, `${NAME:?message}`; `$$` escapes a dollar for the container.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def console_script(name: str) -> Path:
    """A validator's command from the same virtualenv as this interpreter (the `dev` extra)."""
    script = Path(sys.executable).parent / name
    assert script.exists(), f"{name} is not next to {sys.executable}: pip install -e '.[dev]'"
    return script


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: write environment as a mapping"
    return {name: str(value) for name, value in env.items()}


def default_of(value: str) -> str:
    """`${NAME:-default}` as Compose resolves it with NAME unset."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) == ":-" else "", value)


def command(service: str) -> list[str]:
    value = SERVICES[service].get("command", [])
    return value.split() if isinstance(value, str) else [str(part) for part in value]


def one_shots() -> set[str]:
    """Services something waits on to finish (`service_completed_successfully`)."""
    return {
        name
        for spec in SERVICES.values()
        for name, dependency in spec.get("depends_on", {}).items()
        if dependency["condition"] == "service_completed_successfully"
    }


def test_compose_file_matches_the_compose_spec() -> None:
    checked = subprocess.run(
        [
            console_script("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            COMPOSE_FILE,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_exactly_one_dagster_daemon() -> None:
    daemons = [name for name in SERVICES if command(name)[:1] == ["dagster-daemon"]]
    assert daemons == ["dagster-daemon"]
    spec = SERVICES["dagster-daemon"]
    assert spec["deploy"]["replicas"] == 1
    assert "profiles" not in spec  # in every profile, so never zero either
    # The code location is served once, over gRPC, to the webserver and the daemon alike.
    assert command("dagster-code")[:3] == ["dagster", "api", "grpc"]
    assert "goshen_pipelines.definitions" in command("dagster-code")


def test_every_service_is_healthchecked_or_a_one_shot() -> None:
    waited_on = one_shots()
    for name, spec in SERVICES.items():
        if name in waited_on:
            assert spec.get("restart") == "no", f"{name}: a one-shot must not restart"
            assert "healthcheck" not in spec, name
            continue
        check = spec.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        assert spec.get("restart") == "unless-stopped", f"{name}: a long-running service restarts"


def test_dependencies_wait_for_health_or_completion() -> None:
    for name, spec in SERVICES.items():
        for dependency, condition in spec.get("depends_on", {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            assert condition["condition"] in {"service_healthy", "service_completed_successfully"}
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{dependency} has no healthcheck"


def test_migrations_run_once_before_every_platform_process() -> None:
    assert command("migrate") == ["goshen", "db", "upgrade"]
    assert command("dagster-migrate") == ["dagster", "instance", "migrate"]
    for name in ("api", "webhooks", "worker", "worker-cpu"):
        assert SERVICES[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name
    assert "dagster-migrate" in SERVICES["dagster-code"]["depends_on"]


def test_platform_variables_are_documented_settings() -> None:
    for name in SERVICES:
        undocumented = {v for v in environment(name) if v.startswith(ENV_PREFIX)} - SETTINGS
        assert undocumented == set(), f"{name} sets {undocumented}: not settings (goshen/config.py)"
    in_example = set(re.findall(r"^(GOSHEN_[A-Z0-9_]+)=", ENV_EXAMPLE, re.MULTILINE))
    assert in_example - SETTINGS == set()


def test_env_example_documents_every_variable_the_stack_reads() -> None:
    read = {match.group(1) for match in INTERPOLATION.finditer(COMPOSE_TEXT)}
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE, re.MULTILINE))
    assert read - documented == set(), "add them to deploy/.env.example"
    assert documented - read == set(), "deploy/.env.example names variables the stack ignores"
    # Secrets have no defaults: Compose refuses to start until .env sets them.
    for secret in ("GOSHEN_SECRET_KEY", "POSTGRES_PASSWORD", "PLATFORM_DB_PASSWORD"):
        assert re.search(r"\$\{" + secret + r":\?", COMPOSE_TEXT), secret


def test_every_api_replica_shares_one_secret_key() -> None:
    api = SERVICES["api"]
    assert int(default_of(str(api["deploy"]["replicas"]))) >= 2
    keys = {
        environment(name)["GOSHEN_SECRET_KEY"]
        for name in SERVICES
        if "GOSHEN_SECRET_KEY" in environment(name)
    }
    assert keys == {"${GOSHEN_SECRET_KEY:?set GOSHEN_SECRET_KEY in deploy/.env (32+ characters)}"}
    for name in ("api", "worker", "worker-cpu", "webhooks", "migrate", "dagster-daemon"):
        assert "GOSHEN_SECRET_KEY" in environment(name), name
    assert environment("api")["GOSHEN_ENV"] == "production"


def test_images_are_pinned() -> None:
    for name, spec in SERVICES.items():
        image = default_of(spec["image"])
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: pin {image} to a version"
        assert re.search(r"\d", tag), f"{name}: {image} has no version in its tag"
        if "build" in spec:  # Goshen's own, from the Dockerfile's targets
            assert spec["build"]["target"] in {"cpu", "cuda"}
            assert tag.endswith("-" + spec["build"]["target"]), name


def test_gpu_worker_reserves_one_gpu_and_a_cpu_profile_runs_on_a_laptop() -> None:
    gpu, cpu = SERVICES["worker"], SERVICES["worker-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert gpu["build"]["target"] == "cuda" and cpu["build"]["target"] == "cpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    # One GPU, named: Docker would give every `count: 1` replica the same first GPU.
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert [default_of(d) for d in device["device_ids"]] == ["0"] and "count" not in device
    assert "deploy" not in cpu
    assert command("worker") == command("worker-cpu") == ["goshen", "worker"]
    # Long enough for the worker's drain (GOSHEN_WORKER_DRAIN_SECONDS) before Docker kills it.
    drain = float(environment("worker")["GOSHEN_WORKER_DRAIN_SECONDS"])
    assert float(gpu["stop_grace_period"].rstrip("s")) > drain


def test_api_is_reached_only_through_the_proxy() -> None:
    assert "ports" not in SERVICES["api"]
    assert command("api") == ["goshen", "api"]
    assert SERVICES["proxy"]["depends_on"]["api"] == {"condition": "service_healthy"}
    # uvicorn trusts X-Forwarded-For from the proxy's network, and only from it.
    edge = COMPOSE["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    assert environment("api")["FORWARDED_ALLOW_IPS"] == edge
    assert SERVICES["proxy"]["networks"] == ["edge"]
    for store in ("postgres", "redis"):
        assert "ports" not in SERVICES[store], f"{store} must not be published"
        assert SERVICES[store]["networks"] == ["backend"]


def test_each_store_gets_its_own_database() -> None:
    init = (DEPLOY / "compose" / "postgres-init.sh").read_text()
    for database in ("goshen", "dagster", "mlflow"):
        assert re.search(rf"^create {database} ", init, re.MULTILINE), database
    assert environment("api")["GOSHEN_DATABASE_URL"].endswith("@postgres:5432/goshen")
    assert environment("mlflow")["GOSHEN_MLFLOW_BACKEND_STORE_URI"].endswith("/mlflow")
    assert environment("dagster-daemon")["DAGSTER_PG_DB"] == "dagster"


def test_mlflow_runs_on_postgresql_and_s3_after_the_bucket_exists() -> None:
    assert command("mlflow") == ["goshen", "mlflow"]
    mlflow = environment("mlflow")
    assert default_of(mlflow["GOSHEN_MLFLOW_ARTIFACTS_DESTINATION"]).startswith("s3://goshen/")
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:7070"
    assert SERVICES["mlflow"]["depends_on"]["create-buckets"] == {
        "condition": "service_completed_successfully"
    }
    assert "create-bucket" in " ".join(command("create-buckets"))
    assert environment("api")["GOSHEN_STORAGE_BACKEND"] == "s3"
    assert environment("api")["GOSHEN_REDIS_URL"] == "redis://redis:6379/0"


@pytest.mark.parametrize("instance", ["dagster.yaml", "dagster-cpu.yaml"])
def test_compose_dagster_instance_launches_runs_in_docker(
    instance: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dagster.yaml").write_text((DEPLOY / "compose" / instance).read_text())
    for name, value in environment("dagster-daemon").items():
        monkeypatch.setenv(name, value)
    ref = InstanceRef.from_dir(str(tmp_path))

    assert ref.run_storage_data is not None and ref.run_coordinator_data is not None
    assert ref.run_storage_data.module_name.startswith("dagster_postgres")
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    assert ref.compute_logs_data is not None
    assert ref.compute_logs_data.class_name == "S3ComputeLogManager"
    launcher = ref.run_launcher_data
    assert launcher is not None
    assert (launcher.module_name, launcher.class_name) == ("dagster_docker", "DockerRunLauncher")
    config = yaml.safe_load(launcher.config_yaml)
    assert config["network"] == f"{COMPOSE['name']}_backend"
    # Every variable a run's container is handed is one the daemon has to hand.
    assert set(config["env_vars"]) <= set(environment("dagster-daemon"))
    gpu_requests = (config.get("container_kwargs") or {}).get("device_requests", [])
    assert len(gpu_requests) == (1 if instance == "dagster.yaml" else 0)


def test_processes_that_stop_gracefully_get_their_grace_period_before_docker_kills_them() -> None:
    grace = float(environment("api")["GOSHEN_SHUTDOWN_GRACE_SECONDS"])
    default_timeout = Settings.model_fields["webhook_timeout_seconds"].default
    timeout = float(environment("webhooks").get("GOSHEN_WEBHOOK_TIMEOUT_SECONDS", default_timeout))
    assert float(SERVICES["api"]["stop_grace_period"].rstrip("s")) >= grace
    assert float(SERVICES["webhooks"]["stop_grace_period"].rstrip("s")) > timeout

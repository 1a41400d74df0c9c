"""MLflow registry access: register ONNX models, move aliases, load `name@alias`.

Aliases, not stages: `production` is what serving loads, `previous` is kept for rollback. Each
version's tags carry what promotion needs to decide (its metric, its parity check, its dataset).
The bounded REST lookups and the health check live in goshen.registry_rest, re-exported here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.onnx
import onnx
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from goshen.errors import InvalidInputError, NotFoundError
from goshen.registry_rest import NOT_FOUND_CODES
from goshen.registry_rest import RegistryUnavailableError as RegistryUnavailableError
from goshen.registry_rest import bound_mlflow_client as bound_mlflow_client
from goshen.registry_rest import delete_alias as delete_alias
from goshen.registry_rest import ping as ping
from goshen.registry_rest import registered_model_exists as registered_model_exists
from goshen.registry_rest import shown as shown
from goshen.registry_rest import version_exists as version_exists
from goshen.registry_rest import version_for_alias as version_for_alias

PRODUCTION = "production"
PREVIOUS = "previous"
METRIC_TAG = "goshen.metric"
METRIC_NAME_TAG = "goshen.metric_name"
PARITY_TAG = "goshen.parity_max_abs_diff"
CHECKS_TAG = "goshen.checks_passed"
# Protocol buffers cannot serialize past 2 GiB; larger graphs keep their weights beside them.
_PROTOBUF_SAFE_BYTES = 1024**3
RUNTIME_TAG = "goshen.runtime"
PIPELINE_CLASS_TAG = "goshen.pipeline_class"
PIPELINE_INDEX = "model_index.json"
PIPELINE_ARTIFACT = "pipeline"
# Weight formats that run pickled code when loaded: RELIABILITY.md accepts safetensors only.
PICKLE_SUFFIXES = frozenset({".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle"})


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    model_uri: str
    run_id: str | None


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    version: str
    previous_version: str | None
    reason: str


def log_onnx_model(
    model: onnx.ModelProto,
    registered_name: str,
    *,
    metadata: dict[str, Any],
    tags: dict[str, str],
    extra_files: list[Path] | None = None,
) -> RegisteredVersion:
    """Log `model` to the active MLflow run and register it as a new version of that name.

    `extra_files` travel in the version's `extra_files/` folder (the PyTorch weights of a
    diffusion model, so the same version can also be served by PyTorch).
    """
    info = mlflow.onnx.log_model(
        model,
        name="model",
        registered_model_name=registered_name,
        metadata=metadata,
        save_as_external_data=False,
        extra_files=[str(path) for path in extra_files] if extra_files else None,
        await_registration_for=60,
        # Inferring requirements starts a subprocess per model; these are all ONNX ever needs.
        pip_requirements=[
            f"onnx=={package_version('onnx')}",
            f"onnxruntime>={package_version('onnxruntime')}",
        ],
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, version, key, value)
    return RegisteredVersion(registered_name, version, info.model_uri, info.run_id)


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND_CODES:
            return None
        raise


def decide_promotion(
    candidate: float, live: float | None, *, checks_passed: bool, higher_is_better: bool
) -> tuple[bool, str]:
    """Promote only when the checks passed and the metric is not worse than the live one."""
    if not checks_passed:
        return False, "its quality checks did not pass"
    if live is None:
        return True, "no live version to compare with"
    not_worse = candidate >= live if higher_is_better else candidate <= live
    comparison = f"{candidate:.4f} vs live {live:.4f}"
    return not_worse, f"metric {comparison} is {'not worse' if not_worse else 'worse'}"


def promote(
    client: MlflowClient, name: str, version: str, *, higher_is_better: bool = True
) -> PromotionDecision:
    """Move `production` to `version` if it earns it; the old live version becomes `previous`."""
    candidate = client.get_model_version(name, version)
    live = version_by_alias(client, name, PRODUCTION)
    live_version = str(live.version) if live is not None else None
    if live_version == str(candidate.version):
        return PromotionDecision(False, version, None, "it is already the live version")
    promoted, reason = decide_promotion(
        _metric(candidate),
        _metric(live) if live is not None else None,
        checks_passed=candidate.tags.get(CHECKS_TAG) == "true",
        higher_is_better=higher_is_better,
    )
    if promoted:
        if live_version is not None:
            client.set_registered_model_alias(name, PREVIOUS, live_version)
        client.set_registered_model_alias(name, PRODUCTION, version)
    return PromotionDecision(promoted, version, live_version, reason)


def point_production(client: MlflowClient, name: str, version: str) -> None:
    """Move `production` to `version` whatever its metric (a pinning deploy); the old live
    version becomes `previous`."""
    live = version_by_alias(client, name, PRODUCTION)
    if live is not None and str(live.version) == version:
        return
    if live is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(live.version))
    client.set_registered_model_alias(name, PRODUCTION, version)


def _metric(version: ModelVersion) -> float:
    value = version.tags.get(METRIC_TAG)
    if value is None:
        raise NotFoundError(f"model version {version.name} v{version.version} has no metric tag")
    return float(value)


def download_model(name: str, alias: str = PRODUCTION, destination: Path | None = None) -> Path:
    """Download `models:/name@alias` and return the folder holding its MLmodel and model.onnx."""
    try:
        path = mlflow.artifacts.download_artifacts(
            f"models:/{name}@{alias}", dst_path=str(destination) if destination else None
        )
    except MlflowException as exc:
        raise NotFoundError(f"no model {name}@{alias} in the MLflow registry: {exc}") from exc
    return Path(path)


def load_onnx(name: str, alias: str = PRODUCTION) -> onnx.ModelProto:
    """The ONNX graph of `name@alias`, straight from the registry."""
    try:
        model: onnx.ModelProto = mlflow.onnx.load_model(f"models:/{name}@{alias}")
        return model
    except MlflowException as exc:
        raise NotFoundError(f"no model {name}@{alias} in the MLflow registry: {exc}") from exc


def download_version(name: str, version: str, destination: Path, *, timeout: float) -> Path:
    """Download `models:/name/version` into `destination` (made atomically: a half-finished
    download is never seen by another process sharing the folder) and return it.

    NotFoundError when the registry has no such version; RegistryUnavailableError, naming the
    tracking server, when it does not answer within `timeout` seconds or fails the download.
    """
    if (destination / ".complete").exists():
        return destination
    tracking_uri = mlflow.get_tracking_uri()
    if tracking_uri.startswith(("http://", "https://")):
        # Fails at once when the server is down, where MLflow's own client retries for minutes.
        ping(tracking_uri, timeout)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(staging))
        (staging / ".complete").touch()
        try:
            staging.rename(destination)
        except OSError:
            if not (destination / ".complete").exists():
                raise
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND_CODES:
            raise NotFoundError(
                f"no model {name} version {version} in the MLflow registry: {exc}"
            ) from exc
        # Refused connections, timeouts, 5xx: MLflow reports them all as INTERNAL_ERROR. Its
        # words (long, with URLs) stay on the chained exception, for operators.
        raise RegistryUnavailableError(
            f"the MLflow registry at {shown(tracking_uri)} failed to send {name} version {version}"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def log_diffusers_pipeline(
    folder: Path, registered_name: str, *, tags: dict[str, str] | None = None
) -> RegisteredVersion:
    """Register a diffusers pipeline folder (safetensors weights only) as a new model version.

    The folder becomes the artifacts of one MLflow run (the active one, else a new one) under
    `pipeline/`, and the version's source is that artifact folder: `models:/name/version`
    downloads the folder as it was, model_index.json at the top.
    """
    folder = Path(folder)
    pipeline_class = check_pipeline_folder(folder)
    with _run_for(registered_name) as run_id:
        mlflow.log_artifacts(str(folder), artifact_path=PIPELINE_ARTIFACT)
    client = MlflowClient()
    _ensure_registered_model(client, registered_name)
    version = client.create_model_version(
        registered_name,
        f"runs:/{run_id}/{PIPELINE_ARTIFACT}",
        run_id=run_id,
        tags={**(tags or {}), RUNTIME_TAG: "diffusers", PIPELINE_CLASS_TAG: pipeline_class},
        await_creation_for=60,
    )
    number = str(version.version)
    return RegisteredVersion(registered_name, number, f"models:/{registered_name}/{number}", run_id)


def check_pipeline_folder(folder: Path) -> str:
    """The pipeline class a folder saved by diffusers holds; InvalidInputError if it is not one
    the platform may serve (no model_index.json, pickle weights, links, no safetensors)."""
    index = folder / PIPELINE_INDEX
    if not index.is_file():
        raise InvalidInputError(
            f"{folder} has no {PIPELINE_INDEX} at its top; pass the folder a diffusers "
            "pipeline was saved to with save_pretrained",
            field="folder",
        )
    files = [path for path in sorted(folder.rglob("*")) if path.is_file() or path.is_symlink()]
    _refuse(folder, [p for p in files if p.is_symlink()], "links (copy the files in instead)")
    _refuse(
        folder,
        [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES],
        "pickle weight files, which run code when loaded; save the pipeline with "
        "safe_serialization=True (safetensors) and remove them",
    )
    if not any(path.suffix == ".safetensors" for path in files):
        raise InvalidInputError(f"{folder} holds no .safetensors weights", field="folder")
    try:
        pipeline_class = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise InvalidInputError(f"{index} is not a JSON object: {exc}", field="folder") from exc
    if not isinstance(pipeline_class, str):
        raise InvalidInputError(f"{index} names no pipeline class (_class_name)", field="folder")
    return pipeline_class


def model_folder(downloaded: Path) -> Path:
    """The folder holding the MLmodel file of a downloaded model version (itself, or nested)."""
    if (downloaded / "MLmodel").is_file():
        return downloaded
    found = sorted(downloaded.rglob("MLmodel"), key=lambda path: (len(path.parts), path))
    return found[0].parent if found else downloaded


def pipeline_folder(downloaded: Path) -> Path:
    """The folder holding model_index.json in a downloaded pipeline version.

    Versions from `log_diffusers_pipeline` have it at the top; a version registered by other
    means may nest it (the shallowest wins). With none, `downloaded` itself: loading it then
    says what is missing.
    """
    if (downloaded / PIPELINE_INDEX).is_file():
        return downloaded
    found = sorted(downloaded.rglob(PIPELINE_INDEX), key=lambda path: (len(path.parts), path))
    return found[0].parent if found else downloaded


def _refuse(folder: Path, paths: list[Path], what: str) -> None:
    if paths:
        names = ", ".join(str(path.relative_to(folder)) for path in paths[:5])
        more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
        raise InvalidInputError(f"{folder} holds {what}: {names}{more}", field="folder")


@contextmanager
def _run_for(registered_name: str) -> Iterator[str]:
    """The active MLflow run's id, or a new run's for the block."""
    active = mlflow.active_run()
    if active is not None:
        yield active.info.run_id
        return
    with mlflow.start_run(run_name=f"register {registered_name}") as run:
        yield run.info.run_id


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def log_uploaded_onnx(
    model_file: Path, registered_name: str, *, experiment: str, metadata: dict[str, Any]
) -> RegisteredVersion:
    """Log a checked ONNX file (and external data beside it) as a new version of a model."""
    model = onnx.load(str(model_file))  # external data is read from the file's folder
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=registered_name):
        info = mlflow.onnx.log_model(
            model,
            name="model",
            registered_model_name=registered_name,
            metadata=metadata,
            save_as_external_data=model.ByteSize() > _PROTOBUF_SAFE_BYTES,
            await_registration_for=60,
            pip_requirements=[f"onnxruntime>={package_version('onnxruntime')}"],
        )
    return RegisteredVersion(
        registered_name, str(info.registered_model_version), info.model_uri, info.run_id
    )


def delete_version(name: str, version: str) -> None:
    """Remove a version that must not stay registered (its catalog entry could not be made)."""
    MlflowClient().delete_model_version(name, version)

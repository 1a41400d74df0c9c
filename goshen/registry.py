"""MLflow registry access: register ONNX models, move aliases, load `name@alias`.

Aliases, not stages: `production` is what serving loads, `previous` is kept for rollback. Each
version's tags carry what promotion needs to decide (its metric, its parity check, its dataset).
"""

from __future__ import annotations

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

from goshen.errors import NotFoundError

PRODUCTION = "production"
PREVIOUS = "previous"
METRIC_TAG = "goshen.metric"
METRIC_NAME_TAG = "goshen.metric_name"
PARITY_TAG = "goshen.parity_max_abs_diff"
CHECKS_TAG = "goshen.checks_passed"


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
) -> RegisteredVersion:
    """Log `model` to the active MLflow run and register it as a new version of that name."""
    info = mlflow.onnx.log_model(
        model,
        name="model",
        registered_model_name=registered_name,
        metadata=metadata,
        save_as_external_data=False,
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
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
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
        return mlflow.onnx.load_model(f"models:/{name}@{alias}")
    except MlflowException as exc:
        raise NotFoundError(f"no model {name}@{alias} in the MLflow registry: {exc}") from exc

"""ONNX exports registered in MLflow, and promotion of the alias `production`.

Each export carries a blocking parity check (ONNX Runtime against PyTorch); a failed check stops
the run before promotion, and promotion also refuses a version whose tags say its checks failed.
"""

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from goshen import catalog, registry, training
from goshen.catalog import DIGITS_CLASSIFIER, DIGITS_DIFFUSION
from goshen.db.models import TrainingStatus
from goshen_pipelines.defs.training.assets import (
    TrainedModel,
    training_job_partitions,
    training_price,
)
from goshen_pipelines.lib import export, publishing
from goshen_pipelines.lib.classifier import TrainedTabularModel
from goshen_pipelines.lib.diffusion import TrainedDiffusion
from goshen_pipelines.resources import MLflowTracking, PlatformDatabase


class GeneratorQualityConfig(dg.Config):
    samples_per_class: int = 50


@dataclass(frozen=True)
class Candidate:
    """A registered version waiting for promotion, and which way its metric improves."""

    published: publishing.Published
    higher_is_better: bool


def _parity_check(published: publishing.Published) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="onnx_parity",
        passed=published.parity_passed,
        metadata={
            "max_abs_diff": published.parity_max_abs_diff,
            "tolerance": publishing.PARITY_TOLERANCE,
        },
    )


def _parity_spec(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "onnx_parity",
            asset=asset,
            blocking=True,
            description=f"ONNX Runtime matches PyTorch within {publishing.PARITY_TOLERANCE}",
        )
    ]


def _publish(
    trained: TrainedModel,
    registered_name: str,
    metric_name: str,
    metric: float,
    diff: float,
    path: Path,
) -> publishing.Published:
    model = trained.model
    metadata: dict[str, Any] = {
        "kind": "diffusion" if isinstance(model, TrainedDiffusion) else "onnx"
    }
    extra_files = None
    if isinstance(model, TrainedDiffusion):
        metadata["diffusion"] = model.spec.to_dict()
        extra_files = publishing.torch_weights(model.unet, path.parent)
    else:
        assert trained.features is not None, "tabular models carry their training features"
        metadata.update(
            task=model.task,
            classes=[str(c) for c in model.classes],
            input_ranges={export.TABULAR_INPUT: export.feature_range(trained.features)},
        )
    return publishing.register(
        path,
        registered_name,
        run_id=trained.mlflow_run_id,
        parity_max_abs_diff=diff,
        metric_name=metric_name,
        metric=metric,
        metadata=metadata,
        tags=trained.tags,
        extra_files=extra_files,
    )


def _result(candidate: Candidate, extra: dict[str, Any] | None = None) -> dg.Output[Candidate]:
    version = candidate.published.version
    return dg.Output(
        candidate,
        metadata={
            "registered_model": version.name,
            "version": version.version,
            "model_uri": version.model_uri,
            candidate.published.metric_name: candidate.published.metric,
            **(extra or {}),
        },
    )


def _export_tabular(trained: TrainedModel, name: str) -> tuple[Candidate, dg.AssetCheckResult]:
    model = trained.model
    assert isinstance(model, TrainedTabularModel) and trained.features is not None
    metric_name = "val_accuracy" if model.task == "classification" else "val_rmse"
    with tempfile.TemporaryDirectory(prefix="goshen-export-") as workdir:
        path, diff = publishing.export_tabular(model, trained.features, Path(workdir))
        published = _publish(trained, name, metric_name, model.metrics[metric_name], diff, path)
    return Candidate(published, model.task == "classification"), _parity_check(published)


@dg.asset(
    group_name="registry",
    kinds={"onnx", "mlflow"},
    check_specs=_parity_spec("digits_classifier_onnx"),
)
def digits_classifier_onnx(
    digits_classifier: TrainedModel, mlflow: MLflowTracking
) -> Iterator[dg.Output[Candidate] | dg.AssetCheckResult]:
    """The digits classifier exported to ONNX and registered as a new version."""
    candidate, check = _export_tabular(digits_classifier, DIGITS_CLASSIFIER)
    yield _result(candidate)
    yield check


@dg.asset(
    group_name="registry",
    kinds={"onnx", "mlflow"},
    check_specs=_parity_spec("digits_diffusion_onnx"),
)
def digits_diffusion_onnx(
    config: GeneratorQualityConfig,
    digits_diffusion: TrainedModel,
    digits_classifier: TrainedModel,
    mlflow: MLflowTracking,
) -> Iterator[dg.Output[Candidate] | dg.AssetCheckResult]:
    """The digits UNet exported to ONNX, judged by the classifier, registered as a new version."""
    model, judge = digits_diffusion.model, digits_classifier.model
    assert isinstance(model, TrainedDiffusion) and isinstance(judge, TrainedTabularModel)
    with tempfile.TemporaryDirectory(prefix="goshen-export-") as workdir:
        path, diff = publishing.export_denoiser(model, Path(workdir))
        quality = publishing.generator_quality(path, model, judge.predict, config.samples_per_class)
        published = _publish(
            digits_diffusion, DIGITS_DIFFUSION, "class_match", quality.rate, diff, path
        )
    per_class = {str(label): rate for label, rate in quality.per_class.items()}
    yield _result(Candidate(published, True), {"class_match_per_class": per_class})
    yield _parity_check(published)


@dg.asset(
    group_name="registry",
    kinds={"onnx", "mlflow"},
    partitions_def=training_job_partitions,
    check_specs=_parity_spec("training_run_onnx"),
)
def training_run_onnx(
    context: dg.AssetExecutionContext,
    training_run: TrainedModel,
    platform_db: PlatformDatabase,
    mlflow: MLflowTracking,
) -> Iterator[dg.Output[Candidate] | dg.AssetCheckResult]:
    """A training job's model exported to ONNX and registered under the job's model name."""
    with platform_db.session() as session:
        name = training.get(session, context.partition_key).registered_model
    assert name is not None, "submit names every job's registered model"
    if isinstance(training_run.model, TrainedTabularModel):
        candidate, check = _export_tabular(training_run, name)
    else:
        with tempfile.TemporaryDirectory(prefix="goshen-export-") as workdir:
            path, diff = publishing.export_denoiser(training_run.model, Path(workdir))
            loss = training_run.model.history[-1]["loss"]
            published = _publish(training_run, name, "final_loss", loss, diff, path)
        candidate, check = Candidate(published, False), _parity_check(published)
    yield _result(candidate)
    yield check


def _promote(
    candidate: Candidate, mlflow: MLflowTracking, platform_db: PlatformDatabase
) -> dg.MaterializeResult[Any]:
    version = candidate.published.version
    decision = registry.promote(
        mlflow.client(), version.name, version.version, higher_is_better=candidate.higher_is_better
    )
    live = registry.version_by_alias(mlflow.client(), version.name, registry.PRODUCTION)
    if live is not None:
        # Catalog entries that follow this alias serve the new live version from now on.
        with platform_db.session() as session:
            catalog.ensure_builtin_models(session)
            catalog.set_live_version(session, version.name, registry.PRODUCTION, str(live.version))
    return dg.MaterializeResult(
        metadata={
            "promoted": decision.promoted,
            "reason": decision.reason,
            "candidate_version": version.version,
            "live_version": str(live.version) if live else "none",
            "rollback_version": decision.previous_version or "none",
            "live_model_uri": f"models:/{version.name}@{registry.PRODUCTION}",
        }
    )


@dg.asset(group_name="registry", kinds={"mlflow"})
def digits_classifier_production(
    digits_classifier_onnx: Candidate, mlflow: MLflowTracking, platform_db: PlatformDatabase
) -> dg.MaterializeResult[Any]:
    """`digits-classifier@production`, moved only to versions that are not worse."""
    return _promote(digits_classifier_onnx, mlflow, platform_db)


@dg.asset(group_name="registry", kinds={"mlflow"})
def digits_diffusion_production(
    digits_diffusion_onnx: Candidate, mlflow: MLflowTracking, platform_db: PlatformDatabase
) -> dg.MaterializeResult[Any]:
    """`digits-diffusion@production`, moved only to versions whose samples read as well."""
    return _promote(digits_diffusion_onnx, mlflow, platform_db)


@dg.asset(group_name="registry", kinds={"mlflow"}, partitions_def=training_job_partitions)
def training_run_production(
    context: dg.AssetExecutionContext,
    training_run_onnx: Candidate,
    platform_db: PlatformDatabase,
    mlflow: MLflowTracking,
) -> dg.MaterializeResult[Any]:
    """The job's model promoted when it earns it; the job ends succeeded with its version,
    charged the seconds its run took."""
    result = _promote(training_run_onnx, mlflow, platform_db)
    version = training_run_onnx.published.version
    with platform_db.session() as session:
        training.append_log(
            session, context.partition_key, f"registered {version.name} v{version.version}"
        )
        training.finish(
            session,
            context.partition_key,
            TrainingStatus.succeeded,
            price_micros_per_second=training_price(),
            registered_version=version.version,
        )
    return result

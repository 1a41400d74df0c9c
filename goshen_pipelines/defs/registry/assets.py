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
from mlflow import artifacts as mlflow_artifacts
from sqlalchemy import select

from goshen import catalog, registry, trained_models, training
from goshen.catalog import DIGITS_CLASSIFIER, DIGITS_DIFFUSION
from goshen.config import load_settings
from goshen.db.models import DeployPolicy, Model, ModelRuntime, TrainingStatus
from goshen.errors import NotFoundError
from goshen.runtimes.inputs import labeled_schema
from goshen.runtimes.onnx.model import OnnxModel
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
            input_ranges=export.input_ranges(trained.features, trained.columns),
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
        path, diff = publishing.export_tabular(
            model, trained.features, Path(workdir), trained.columns
        )
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
    """A training job's model exported to ONNX, registered under the job's model name and
    recorded in its owner's catalog entry (made with the model's first version)."""
    with platform_db.session() as session:
        name = training.get(session, context.partition_key).registered_model
    assert name is not None, "submit names every job's registered model"
    model = training_run.model
    if isinstance(model, TrainedTabularModel):
        candidate, check = _export_tabular(training_run, name)
        metrics = dict(model.metrics)
    else:
        with tempfile.TemporaryDirectory(prefix="goshen-export-") as workdir:
            path, diff = publishing.export_denoiser(model, Path(workdir))
            loss = model.history[-1]["loss"]
            published = _publish(training_run, name, "final_loss", loss, diff, path)
        candidate, check = Candidate(published, False), _parity_check(published)
        metrics = {"final_loss": loss}
    metrics["onnx_parity_max_abs_diff"] = candidate.published.parity_max_abs_diff
    trained = _trained_version(training_run, candidate, metrics)
    with platform_db.session() as session:
        job = training.get(session, context.partition_key)
        entry = trained_models.entry_for_job(session, job, trained.runtime, _prices())
        trained_models.record_version(session, entry, job, trained)
        if not trained.checks_passed:
            # The blocking check stops the run here: an entry serving nothing says why.
            trained_models.checks_failed(entry, trained.version)
    yield _result(candidate, {"catalog_model": name})
    yield check


def _prices() -> trained_models.Prices:
    settings = load_settings()
    return trained_models.Prices(
        settings.trained_model_image_price_micros, settings.trained_model_request_price_micros
    )


def _trained_version(
    trained: TrainedModel, candidate: Candidate, metrics: dict[str, float]
) -> trained_models.TrainedVersion:
    """What the catalog records of a job's registered version, its input schema included:
    a generator's from the classes it learned, a table model's from its ONNX graph."""
    published = candidate.published
    model = trained.model
    fields: dict[str, Any] = {
        "version": published.version.version,
        "metrics": metrics,
        "metric_name": published.metric_name,
        "checks_passed": published.parity_passed,
        "mlflow_run_id": trained.mlflow_run_id,
    }
    if isinstance(model, TrainedDiffusion):
        spec = model.spec
        classes = spec.class_names or [str(label) for label in range(spec.num_classes)]
        schema, examples = labeled_schema(classes, spec.image_size)
        return trained_models.TrainedVersion(
            runtime=ModelRuntime.onnx_diffusion,
            input_schema=schema,
            examples=examples,
            classes=classes,
            image_size=spec.image_size,
            **fields,
        )
    with tempfile.TemporaryDirectory(prefix="goshen-schema-") as workdir:
        folder = mlflow_artifacts.download_artifacts(published.version.model_uri, dst_path=workdir)
        schema = OnnxModel.from_folder(folder).public_schema()
    return trained_models.TrainedVersion(
        runtime=ModelRuntime.onnx, input_schema=schema, examples=[schema["example"]], **fields
    )


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
    """The job's version served as the job's deploy policy says (goshen.trained_models); the
    job ends succeeded with its version, charged the seconds its run took."""
    published = training_run_onnx.published
    version = published.version
    client = mlflow.client()
    with platform_db.session() as session:
        policy = training.get(session, context.partition_key).deploy
        # Locked while the registry decides: two versions of one model promote one at a time.
        entry = session.scalar(select(Model).where(Model.name == version.name).with_for_update())
        if entry is None:
            raise NotFoundError(f"the catalog has no model {version.name}; was it deleted?")
        metadata: dict[str, Any] = {"deploy": str(policy)}
        if policy == DeployPolicy.auto:
            decision = registry.promote(
                client,
                version.name,
                version.version,
                higher_is_better=training_run_onnx.higher_is_better,
            )
            metadata.update(promoted=decision.promoted, reason=decision.reason)
        elif policy == DeployPolicy.pin and published.parity_passed:
            registry.point_production(client, version.name, version.version)
        live = registry.version_by_alias(client, version.name, registry.PRODUCTION)
        outcome = trained_models.serve_decided(
            session,
            entry,
            policy=policy,
            version=version.version,
            checks_passed=published.parity_passed,
            production=str(live.version) if live is not None else None,
        )
        training.append_log(
            session,
            context.partition_key,
            f"registered {version.name} v{version.version}; "
            + outcome.replace("{name}", entry.name.split(".", 1)[-1]),
        )
        training.finish(
            session,
            context.partition_key,
            TrainingStatus.succeeded,
            price_micros_per_second=training_price(),
            registered_version=version.version,
        )
    return dg.MaterializeResult(metadata={**metadata, "outcome": outcome})

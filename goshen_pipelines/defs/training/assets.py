"""Training runs with Lightning, one MLflow run each: the built-in digits models and API jobs."""

from dataclasses import asdict, dataclass, replace
from typing import Any

import dagster as dg
import numpy as np

from goshen import training
from goshen.catalog import DIGITS_CLASSIFIER, DIGITS_DIFFUSION
from goshen.config import load_settings
from goshen.db.models import TrainingJob, TrainingStatus, utcnow
from goshen.errors import ConflictError, NotFoundError
from goshen.runtimes.diffusion import sample_images, to_png_grid
from goshen_pipelines.lib import ingest, runs
from goshen_pipelines.lib.arrays import image_arrays, table_arrays
from goshen_pipelines.lib.classifier import (
    DIGITS_CLASSIFIER_CONFIG,
    ClassifierConfig,
    TrainedTabularModel,
    train_classifier,
)
from goshen_pipelines.lib.datasets import DIGITS_KEY, load_canonical
from goshen_pipelines.lib.diffusion import DiffusionConfig, TrainedDiffusion, train_diffusion
from goshen_pipelines.lib.digits import classifier_features, resize_images
from goshen_pipelines.resources import ArtifactStorage, MLflowTracking, PlatformDatabase

training_job_partitions = dg.DynamicPartitionsDefinition(name="training_job")
DIGITS_EXPERIMENT = "digits"
SAMPLES_PER_CLASS = 4


@dataclass
class TrainedModel:
    """A trained model and what publishing it needs, handed to the ONNX asset."""

    model: TrainedDiffusion | TrainedTabularModel
    mlflow_run_id: str
    tags: dict[str, str]
    features: np.ndarray | None = None  # tabular models: real rows to export and check with
    # Table jobs: each feature column's name and dtype, in training order; the export takes
    # one input per column. None: one `features` matrix input (the digits classifier).
    columns: list[tuple[str, str]] | None = None


class DigitsDiffusionConfig(dg.Config):
    epochs: int = DiffusionConfig.epochs
    batch_size: int = DiffusionConfig.batch_size
    learning_rate: float = DiffusionConfig.learning_rate
    image_size: int = DiffusionConfig.image_size
    seed: int = DiffusionConfig.seed


class DigitsClassifierConfig(dg.Config):
    epochs: int = DIGITS_CLASSIFIER_CONFIG.epochs
    batch_size: int = DIGITS_CLASSIFIER_CONFIG.batch_size
    learning_rate: float = DIGITS_CLASSIFIER_CONFIG.learning_rate
    seed: int = DIGITS_CLASSIFIER_CONFIG.seed


def _log(context: dg.AssetExecutionContext) -> runs.Report:
    """Epoch lines into the run's log, where the Dagster UI and `goshen train` show them."""
    return lambda line, _progress: context.log.info(line)


def _tags(context: dg.AssetExecutionContext, dataset_id: str) -> dict[str, str]:
    return {"dagster_run_id": context.run.run_id, "dataset_id": dataset_id}


def _sample_grid(trained: TrainedDiffusion) -> bytes:
    labels = [label for _ in range(SAMPLES_PER_CLASS) for label in range(trained.spec.num_classes)]
    images = sample_images(trained.denoiser(), trained.spec, labels, seed=0)
    return to_png_grid(images, columns=trained.spec.num_classes)


def _train_diffusion(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    config: DiffusionConfig,
    report: runs.Report | None,
) -> tuple[TrainedDiffusion, dict[str, Any]]:
    resized = resize_images(images, config.image_size)
    trained = train_diffusion(
        resized,
        labels,
        len(class_names),
        config,
        runs.epoch_logger(config.epochs, report),
        class_names=class_names,
    )
    png = _sample_grid(trained)
    runs.log_sample_grid(png)
    metadata = {
        "final_loss": trained.history[-1]["loss"],
        "samples": dg.MetadataValue.md(runs.markdown_image(png, "generated samples")),
    }
    return trained, metadata


def _output(
    trained: TrainedModel, mlflow: MLflowTracking, metadata: dict[str, Any]
) -> dg.Output[TrainedModel]:
    url = runs.run_url(mlflow.uri, trained.mlflow_run_id)
    return dg.Output(
        trained,
        metadata={
            "mlflow_run_id": trained.mlflow_run_id,
            "mlflow_run": dg.MetadataValue.url(url),
            **metadata,
        },
    )


@dg.asset(group_name="training", kinds={"pytorch", "mlflow"}, deps=["digits_dataset"])
def digits_classifier(
    context: dg.AssetExecutionContext,
    config: DigitsClassifierConfig,
    artifact_store: ArtifactStorage,
    mlflow: MLflowTracking,
) -> dg.Output[TrainedModel]:
    """An MLP that reads 8x8 digits; it also judges the digits generator's samples."""
    data = ingest.read_canonical(artifact_store.store, DIGITS_KEY)
    images, labels, _ = image_arrays(data)
    features = classifier_features(images)
    # The digits preset trains on lightly noised inputs, so it can judge generated digits fairly.
    lib_config = replace(DIGITS_CLASSIFIER_CONFIG, **config.model_dump())
    tags = _tags(context, "digits")
    with runs.tracked_run(DIGITS_EXPERIMENT, DIGITS_CLASSIFIER, tags, asdict(lib_config)) as run_id:
        trained = train_classifier(
            features, labels, lib_config, runs.epoch_logger(lib_config.epochs, _log(context))
        )
    return _output(TrainedModel(trained, run_id, tags, features), mlflow, trained.metrics)


@dg.asset(group_name="training", kinds={"pytorch", "diffusers", "mlflow"}, deps=["digits_dataset"])
def digits_diffusion(
    context: dg.AssetExecutionContext,
    config: DigitsDiffusionConfig,
    artifact_store: ArtifactStorage,
    mlflow: MLflowTracking,
) -> dg.Output[TrainedModel]:
    """A class-conditional diffusion UNet that draws the digit it is asked for."""
    data = ingest.read_canonical(artifact_store.store, DIGITS_KEY)
    images, labels, num_classes = image_arrays(data)
    lib_config = DiffusionConfig(**config.model_dump())
    tags = _tags(context, "digits")
    with runs.tracked_run(DIGITS_EXPERIMENT, DIGITS_DIFFUSION, tags, asdict(lib_config)) as run_id:
        trained, metadata = _train_diffusion(images, labels, num_classes, lib_config, _log(context))
    return _output(TrainedModel(trained, run_id, tags), mlflow, metadata)


def training_price() -> int:
    """The training price when a job ends (GOSHEN_TRAINING_PRICE_MICROS_PER_SECOND)."""
    return load_settings().training_price_micros_per_second


class TrainingCanceled(Exception):
    """The job's cancel was requested while it trained."""


class TrainingTimedOut(Exception):
    """The run passed the job's time limit, the most its hold pays for."""


def _job_reporter(
    context: dg.AssetExecutionContext, platform_db: PlatformDatabase, job_id: str, limit: int
) -> runs.Report:
    """Log lines and progress to the job row; stop training once a cancel is requested (the
    user pays for the seconds run) or the job's time limit passed (failed, uncharged)."""

    def report(line: str, progress: dict[str, Any]) -> None:
        context.log.info(line)
        with platform_db.session() as session:
            training.append_log(session, job_id, line, progress)
            job = training.get(session, job_id)
            canceled, started = job.cancel_requested, job.started_at
        if canceled:
            _end(platform_db, job_id, TrainingStatus.canceled)
            raise TrainingCanceled(f"training job {job_id} was canceled")
        if started is not None and (utcnow() - started).total_seconds() > limit:
            error = (
                f"training job {job_id} ran past its time limit of {limit} s (twice its "
                f"estimate plus {training.STARTUP_SECONDS} s) and was stopped, uncharged; the "
                "estimate is off for this dataset: try fewer epochs"
            )
            _end(platform_db, job_id, TrainingStatus.failed, error)
            raise TrainingTimedOut(error)

    return report


def _end(
    platform_db: PlatformDatabase, job_id: str, status: TrainingStatus, error: str | None = None
) -> None:
    with platform_db.session() as session:
        training.finish(
            session, job_id, status, price_micros_per_second=training_price(), error=error
        )


@dg.asset(
    group_name="training",
    kinds={"pytorch", "mlflow"},
    partitions_def=training_job_partitions,
)
def training_run(
    context: dg.AssetExecutionContext,
    artifact_store: ArtifactStorage,
    platform_db: PlatformDatabase,
    mlflow: MLflowTracking,
) -> dg.Output[TrainedModel]:
    """The model a training job asked for, trained on its dataset."""
    job_id = context.partition_key
    with platform_db.session() as session:
        job = session.get(TrainingJob, job_id)
        if job is None:
            raise NotFoundError(f"no training job with id {job_id}")
        if not training.mark_running(session, job_id, context.run.run_id):
            raise ConflictError(f"training job {job_id} is {job.status}, not queued; not training")
        if job.dataset_id is None:
            raise NotFoundError(f"training job {job_id}'s dataset was deleted")
        data = load_canonical(session, artifact_store.store, job.dataset_id)
        task, config = training.Task(job.task), training.TrainingConfig(**job.config)
        experiment, dataset_id = f"training/{job.user_id}", job.dataset_id
        limit = training.time_limit(session, job)
    report = _job_reporter(context, platform_db, job_id, limit)
    tags = {**_tags(context, dataset_id), "training_job_id": job_id}
    with runs.tracked_run(experiment, job_id, tags, config.model_dump()) as run_id:
        with platform_db.session() as session:
            training.get(session, job_id).mlflow_run_id = run_id
        trained, table, metadata = _train_job(task, config, data, report)
    features, columns = table if table is not None else (None, None)
    return _output(TrainedModel(trained, run_id, tags, features, columns), mlflow, metadata)


def _train_job(
    task: training.Task,
    config: training.TrainingConfig,
    data: ingest.CanonicalDataset,
    report: runs.Report,
) -> tuple[
    TrainedDiffusion | TrainedTabularModel,
    tuple[np.ndarray, list[tuple[str, str]]] | None,
    dict[str, Any],
]:
    """The trained model, a table's features and columns (None for images), and metadata."""
    if task is training.Task.diffusion:
        images, labels, class_names = image_arrays(data)
        diffusion_config = DiffusionConfig(
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            seed=config.seed,
            image_size=config.image_size,
        )
        trained, metadata = _train_diffusion(images, labels, class_names, diffusion_config, report)
        return trained, None, metadata
    assert config.target is not None, "the API requires a target for tabular tasks"
    features, targets, columns = table_arrays(data, config.target)
    classifier_config = ClassifierConfig(
        task="classification" if task is training.Task.classification else "regression",
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
    )
    model = train_classifier(
        features, targets, classifier_config, runs.epoch_logger(config.epochs, report)
    )
    return model, (features, columns), dict(model.metrics)

"""Datasets: the built-in digits and every uploaded dataset, as canonical Parquet with stats."""

from typing import Any

import dagster as dg

from goshen.db.access import ids_since
from goshen.db.models import Dataset, DatasetStatus
from goshen.errors import GoshenError
from goshen_pipelines.lib import datasets, ingest
from goshen_pipelines.resources import ArtifactStorage, PlatformDatabase

dataset_partitions = dg.DynamicPartitionsDefinition(name="dataset")
MIN_LABEL_BALANCE = 0.2


def _check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec("not_empty", asset=asset, blocking=True),
        dg.AssetCheckSpec("schema", asset=asset, blocking=True),
        dg.AssetCheckSpec(
            "label_balance",
            asset=asset,
            description=f"smallest class has at least {MIN_LABEL_BALANCE:.0%} of the largest",
        ),
    ]


def _check_results(result: ingest.IngestResult) -> list[dg.AssetCheckResult]:
    required = {"label", "pixels", "height", "width"} if result.kind == "images" else set()
    missing = sorted(required - set(result.schema))
    balance = result.label_balance
    return [
        dg.AssetCheckResult(
            check_name="not_empty", passed=result.rows > 0, metadata={"rows": result.rows}
        ),
        dg.AssetCheckResult(check_name="schema", passed=not missing, metadata={"missing": missing}),
        dg.AssetCheckResult(
            check_name="label_balance",
            passed=balance is None or balance >= MIN_LABEL_BALANCE,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"balance": balance if balance is not None else "no labels"},
        ),
    ]


def _metadata(result: ingest.IngestResult) -> dict[str, Any]:
    return {
        "rows": result.rows,
        "size_bytes": result.size_bytes,
        "classes": result.classes,
        "class_counts": result.class_counts,
        "label_balance": result.label_balance if result.label_balance is not None else "n/a",
        "schema": dg.TableSchema(
            columns=[dg.TableColumn(name, dtype) for name, dtype in result.schema.items()]
        ),
        "storage_key": result.key,
    }


@dg.asset(
    group_name="datasets", kinds={"polars", "parquet"}, check_specs=_check_specs("digits_dataset")
)
def digits_dataset(artifact_store: ArtifactStorage) -> dg.MaterializeResult:  # type: ignore[type-arg]  # dagster takes only the bare class on assets with checks
    """scikit-learn's bundled handwritten digits (1,797 8x8 images), ready to train on offline."""
    result = ingest.ingest_digits(artifact_store.store, datasets.DIGITS_KEY)
    return dg.MaterializeResult(metadata=_metadata(result), check_results=_check_results(result))


def _failure_reason(exc: Exception, run_id: str) -> str:
    """What the dataset's owner reads: a fault of their data as said, none of the platform's."""
    if isinstance(exc, GoshenError | ValueError):
        return str(exc)
    return (
        f"ingestion stopped on the platform's side (Dagster run {run_id}); upload the dataset "
        "again, and ask an admin if it fails again"
    )


@dg.asset(
    group_name="datasets",
    kinds={"polars", "parquet"},
    partitions_def=dataset_partitions,
    check_specs=_check_specs("uploaded_dataset"),
)
def uploaded_dataset(
    context: dg.AssetExecutionContext,
    artifact_store: ArtifactStorage,
    platform_db: PlatformDatabase,
) -> dg.MaterializeResult:  # type: ignore[type-arg]  # dagster takes only the bare class on assets with checks
    """An uploaded dataset, validated and written as canonical Parquet; its row becomes ready.

    Each step commits on its own, so the API shows the row validating, its progress as it
    moves, and then ready, or failed with the reason.
    """
    dataset_id = context.partition_key
    with platform_db.session() as session:
        dataset = datasets.start_ingest(session, dataset_id)
        prefix, destination = dataset.storage_prefix, datasets.canonical_key(dataset)

    def report(progress: dict[str, Any]) -> None:
        context.log.info(
            f"{progress['stage']}: {progress['done']}/{progress['total']} {progress['unit']} "
            f"({progress['percent']}%)"
        )
        with platform_db.session() as session:
            datasets.save_progress(session, dataset_id, progress)

    try:
        result = ingest.ingest_dataset(
            artifact_store.store,
            prefix,
            destination,
            image_size=datasets.CANONICAL_IMAGE_SIZE,
            report=report,
        )
    except Exception as exc:
        with platform_db.session() as session:
            datasets.fail_ingest(session, dataset_id, _failure_reason(exc, context.run_id))
        raise
    with platform_db.session() as session:
        datasets.finish_ingest(session, dataset_id, result)
    return dg.MaterializeResult(metadata=_metadata(result), check_results=_check_results(result))


@dg.sensor(
    asset_selection=[uploaded_dataset],
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def uploaded_dataset_sensor(
    context: dg.SensorEvaluationContext, platform_db: PlatformDatabase
) -> dg.SensorResult:
    """Ingest every dataset uploaded since the cursor, once (the run key is the dataset id)."""
    with platform_db.session() as session:
        query = ids_since(Dataset.id, Dataset.status, DatasetStatus.uploaded, context.cursor, 25)
        new_ids = list(session.scalars(query))
    if not new_ids:
        return dg.SensorResult(skip_reason="no new datasets")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"dataset-{i}", partition_key=i) for i in new_ids],
        dynamic_partitions_requests=[dataset_partitions.build_add_request(new_ids)],
        cursor=new_ids[-1],
    )

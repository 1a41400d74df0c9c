"""Datasets: the built-in digits and every uploaded dataset, as canonical Parquet with stats."""

from typing import Any

import dagster as dg

from goshen.db.access import ids_since
from goshen.db.models import Dataset, DatasetStatus
from goshen_pipelines.lib import ingest
from goshen_pipelines.lib.datasets import DIGITS_KEY, ingest_uploaded
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
    result = ingest.ingest_digits(artifact_store.store, DIGITS_KEY)
    return dg.MaterializeResult(metadata=_metadata(result), check_results=_check_results(result))


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
    """An uploaded dataset, validated and written as canonical Parquet; its row becomes ready."""
    with platform_db.session() as session:
        result = ingest_uploaded(session, artifact_store.store, context.partition_key)
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

"""Sensors that end a dataset's ingestion when its run ends without the asset saying how.

The asset records `failed` itself when ingestion raises; a run that dies (killed, out of memory)
or is canceled leaves the dataset `validating`, with nothing left to move it. These sensors see
such runs end and fail the dataset, so its status, its event stream and the SDK's wait all end.
"""

import re

import dagster as dg

from goshen.db.models import Dataset, DatasetStatus
from goshen.ids import id_pattern
from goshen_pipelines.defs.datasets.assets import uploaded_dataset
from goshen_pipelines.lib import datasets
from goshen_pipelines.resources import PlatformDatabase

UNFINISHED = (DatasetStatus.uploaded, DatasetStatus.validating)
DATASET_ID = re.compile(id_pattern("ds"))


def dataset_of(run: dg.DagsterRun) -> str | None:
    """The dataset a run ingests, if it is an ingestion run: one of `uploaded_dataset`'s
    partitions, which are dataset ids (a run launched with a job has no asset selection)."""
    if run.asset_selection and uploaded_dataset.key not in run.asset_selection:
        return None
    partition = run.tags.get("dagster/partition")
    if partition is None or not DATASET_ID.match(partition):
        return None
    return partition


def fail_unfinished(platform_db: PlatformDatabase, dataset_id: str, error: str) -> bool:
    """Fail the dataset if its ingestion did not end; False when it had (ready or failed)."""
    with platform_db.session() as session:
        dataset = session.get(Dataset, dataset_id, with_for_update=True)
        if dataset is None or dataset.status not in UNFINISHED:
            return False
        datasets.fail_ingest(session, dataset_id, error)
    return True


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING)
def dataset_run_failure_sensor(
    context: dg.RunFailureSensorContext, platform_db: PlatformDatabase
) -> None:
    """An ingestion run that failed before the asset could record it fails its dataset."""
    run = context.dagster_run
    dataset_id = dataset_of(run)
    if dataset_id is not None:
        fail_unfinished(
            platform_db,
            dataset_id,
            f"its ingestion stopped before it finished (Dagster run {run.run_id}); upload it "
            "again, or ask an admin if it happens again",
        )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED, default_status=dg.DefaultSensorStatus.RUNNING
)
def dataset_run_canceled_sensor(
    context: dg.RunStatusSensorContext, platform_db: PlatformDatabase
) -> None:
    """An ingestion run an operator canceled fails its dataset."""
    run = context.dagster_run
    dataset_id = dataset_of(run)
    if dataset_id is not None:
        fail_unfinished(
            platform_db,
            dataset_id,
            f"its ingestion was canceled (Dagster run {run.run_id}); upload it again",
        )

"""Sensors that connect the training-jobs table to Dagster runs.

The API only writes rows. `training_job_sensor` launches one run per new row (its run key is the
job id, so a row can never launch twice); `training_cancel_sensor` terminates the runs of jobs
whose cancel was requested; the run-status sensors write each run's outcome back to its row
(goshen.training.finish, which settles its charge: a canceled run pays for the seconds until the
run stopped, a failed one nothing).
"""

from datetime import UTC, datetime

import dagster as dg
from sqlalchemy import select

from goshen import training
from goshen.db.access import ids_since
from goshen.db.models import TrainingJob, TrainingStatus
from goshen_pipelines.defs.jobs import training_run_job
from goshen_pipelines.defs.training.assets import training_job_partitions, training_price
from goshen_pipelines.resources import PlatformDatabase

BATCH = 25


def run_key(job_id: str) -> str:
    return f"training-job-{job_id}"


@dg.sensor(
    job=training_run_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def training_job_sensor(
    context: dg.SensorEvaluationContext, platform_db: PlatformDatabase
) -> dg.SensorResult:
    """Launch a run for every training job queued since the cursor."""
    with platform_db.session() as session:
        query = ids_since(
            TrainingJob.id, TrainingJob.status, TrainingStatus.queued, context.cursor, BATCH
        )
        new_ids = list(session.scalars(query))
    if not new_ids:
        return dg.SensorResult(skip_reason="no new training jobs")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=run_key(job_id), partition_key=job_id) for job_id in new_ids
        ],
        dynamic_partitions_requests=[training_job_partitions.build_add_request(new_ids)],
        cursor=new_ids[-1],
    )


@dg.sensor(minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING)
def training_cancel_sensor(
    context: dg.SensorEvaluationContext, platform_db: PlatformDatabase
) -> dg.SkipReason:
    """Terminate the Dagster runs of running jobs whose cancel was requested."""
    with platform_db.session() as session:
        runs = list(
            session.scalars(
                select(TrainingJob.dagster_run_id).where(
                    TrainingJob.status == TrainingStatus.running,
                    TrainingJob.cancel_requested.is_(True),
                    TrainingJob.dagster_run_id.is_not(None),
                )
            )
        )
    stopped = [
        run_id for run_id in runs if run_id is not None and _cancel(context.instance, run_id)
    ]
    return dg.SkipReason(f"asked {len(stopped)} run(s) to stop: {stopped}")


def _cancel(instance: dg.DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    if run is None or run.is_finished or run.status == dg.DagsterRunStatus.CANCELING:
        return False
    return instance.run_coordinator.cancel_run(run_id)


def _record_outcome(
    context: dg.RunStatusSensorContext,
    platform_db: PlatformDatabase,
    status: TrainingStatus,
    error: str | None = None,
) -> None:
    run = context.dagster_run
    job_id = run.tags.get("dagster/partition")
    if job_id is None:
        return
    # The sensor may see the run's end a while after it: the seconds run end when the run did.
    end_time = context.instance.get_run_stats(run.run_id).end_time
    ended_at = datetime.fromtimestamp(end_time, UTC) if end_time is not None else None
    with platform_db.session() as session:
        training.finish(
            session,
            job_id,
            status,
            price_micros_per_second=training_price(),
            ended_at=ended_at,
            error=error,
        )


@dg.run_failure_sensor(
    monitored_jobs=[training_run_job], default_status=dg.DefaultSensorStatus.RUNNING
)
def training_failure_sensor(
    context: dg.RunFailureSensorContext, platform_db: PlatformDatabase
) -> None:
    """A failed run fails its job, with the run's error; its hold is released uncharged."""
    message = context.failure_event.message or "the training run failed; see its Dagster logs"
    _record_outcome(context, platform_db, TrainingStatus.failed, message[:2000])


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    monitored_jobs=[training_run_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def training_canceled_sensor(
    context: dg.RunStatusSensorContext, platform_db: PlatformDatabase
) -> None:
    """A terminated run ends its job `canceled`: charged the seconds it ran when its user
    canceled it, nothing when an operator stopped it (goshen.billing.training_charges)."""
    _record_outcome(context, platform_db, TrainingStatus.canceled)

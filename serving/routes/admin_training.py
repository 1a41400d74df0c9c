"""Admin route over any user's training job: the job as its owner sees it, with its log's end.

The owner's log stream (GET /v1/training-jobs/{id}/logs) answers only the owner and runs until
the job ends; an admin watching a job polls this instead."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from goshen import training
from serving.http.dependencies import AdminPrincipal, ReadSessionDep, SettingsDep
from serving.http.paths import TrainingJobId
from serving.routes.training import training_job_view
from serving.schemas.admin_training import AdminTrainingJobDetail

router = APIRouter(prefix="/v1/admin/training-jobs", tags=["admin"])
MAX_LOG_LINES = 2000


@router.get("/{job_id}")
def get_any_training_job(
    job_id: TrainingJobId,
    _admin: AdminPrincipal,
    session: ReadSessionDep,
    settings: SettingsDep,
    lines: Annotated[
        int, Query(ge=0, le=MAX_LOG_LINES, description=f"log lines, at most {MAX_LOG_LINES}")
    ] = 200,
) -> AdminTrainingJobDetail:
    """Any user's training job, with `user_id` and the last `lines` lines of its log."""
    job = training.get(session, job_id)
    logged = (job.logs or "").splitlines()
    return AdminTrainingJobDetail(
        **training_job_view(job, settings).model_dump(),
        user_id=job.user_id,
        log_tail=logged[-lines:] if lines else [],
        log_lines=len(logged),
    )

"""Body of the admin route over one training job: the job and the end of its log."""

from __future__ import annotations

from pydantic import Field

from serving.schemas.admin_ops import AdminTrainingJobPublic


class AdminTrainingJobDetail(AdminTrainingJobPublic):
    log_tail: list[str] = Field(description="the last `lines` lines of its log, oldest first")
    log_lines: int = Field(description="lines its log holds in all")

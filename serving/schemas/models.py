"""Bodies of the routes owners manage their trained models with, and of model versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.schemas import Description, Email, RequestBody


class ModelVersionPublic(BaseModel):
    """A registered version of a model, as the platform recorded it."""

    model_config = ConfigDict(from_attributes=True)

    version: str
    live: bool = Field(default=False, description="whether the model serves this version now")
    source: str = Field(description="training (a training job made it) or pipeline")
    metrics: dict[str, Any] = Field(description="what its training measured")
    metric_name: str | None = Field(description="the metric promotion compares")
    checks_passed: bool | None = Field(description="whether its quality checks passed")
    classes: list[str] | None = Field(description="a generator's classes, by index")
    image_size: int | None = Field(description="a generator's image side in pixels")
    training_job_id: str | None
    dataset_id: str | None
    mlflow_run_id: str | None
    created_at: datetime


class OwnedModelUpdate(RequestBody):
    """PATCH /v1/models/{name}: what an owner may change. Prices are the operator's."""

    description: Description

    @field_validator("description", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null; send the new description")
        return value


class OwnerTransfer(RequestBody):
    """POST /v1/admin/models/{name}/transfer: give a customer's model to another user."""

    owner_email: Email = Field(description="the email of the user who owns it from now on")

"""Request and response bodies: requests reject unknown fields; responses hold no storage fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from goshen.db.models import ApiKey, DatasetKind, DatasetStatus, Role, TrainingStatus
from goshen.training import Task, TrainingConfig

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyCreate(RequestBody):
    name: Name
    scopes: list[str] | None = Field(
        default=None,
        max_length=20,
        description="scopes for the new key; default: every scope the owner and this key hold",
    )


class PublicBody(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class KeyPublic(PublicBody):
    id: str
    user_id: str
    name: str
    prefix: str
    last4: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="the secret API key; shown only in this response")

    @classmethod
    def of(cls, key: ApiKey, plaintext: str) -> KeyCreated:
        return cls(**KeyPublic.model_validate(key).model_dump(), key=plaintext)


class UserCreate(RequestBody):
    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=320)]
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    role: Role = Role.developer


class UserUpdate(RequestBody):
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    role: Role | None = None
    disabled: bool | None = Field(default=None, description="true disables the user and its keys")


class UserPublic(PublicBody):
    id: str
    email: str
    name: str
    role: Role
    created_at: datetime
    disabled_at: datetime | None


class TrainingJobCreate(RequestBody):
    dataset_id: Annotated[str, StringConstraints(max_length=40)]
    task: Task
    model_name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
    config: TrainingConfig = Field(default_factory=TrainingConfig)


class TrainingJobPublic(PublicBody):
    id: str
    dataset_id: str | None
    task: str
    model_name: str
    config: dict[str, Any]
    status: TrainingStatus
    progress: dict[str, Any] | None
    error: str | None
    dagster_run_id: str | None
    mlflow_run_id: str | None
    registered_model: str | None
    registered_version: str | None
    estimated_cost_micros: int | None
    gpu_seconds: float | None
    cost_micros: int | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class DatasetCreate(RequestBody):
    """The text fields of a dataset upload; the file itself is the multipart part `file`."""

    name: Name
    kind: DatasetKind | None = Field(
        default=None, description="images or tabular; inferred from the file's content when absent"
    )
    target: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="tables: the target column, whose distribution goes into stats"
    )


class DatasetPublic(PublicBody):
    id: str
    name: str
    kind: DatasetKind
    status: DatasetStatus
    size_bytes: int = Field(description="bytes the dataset takes in the artifact store")
    file_count: int = Field(description="images of an image archive; 1 for a table")
    # `schema` would shadow a BaseModel method, hence the alias.
    schema_: dict[str, Any] | None = Field(
        validation_alias="schema",
        serialization_alias="schema",
        description="columns and their types, as {columns: {name: dtype}}",
    )
    stats: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime

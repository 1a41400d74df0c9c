"""Bodies of the dataset routes: an upload's fields, a dataset, and how far its ingestion is."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from goshen.db.models import DatasetKind, DatasetStatus
from serving.schemas import ColumnName, Name, PublicBody, RequestBody


class DatasetCreate(RequestBody):
    """The text fields of a dataset upload; the file itself is the multipart part `file`."""

    name: Name
    kind: DatasetKind | None = Field(
        default=None, description="images or tabular; inferred from the file's content when absent"
    )
    target: ColumnName | None = Field(
        default=None, description="tables: the target column, whose distribution goes into stats"
    )


class DatasetProgress(BaseModel):
    """How far ingestion is: the stage it is in, its count of files or rows, and the whole's
    percent (100 when the dataset is ready)."""

    stage: str = Field(description="e.g. waiting to start, decoding images, reading rows")
    done: int = Field(ge=0)
    total: int = Field(ge=0)
    unit: Literal["files", "rows"]
    percent: int = Field(ge=0, le=100)


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
    progress: DatasetProgress | None = Field(
        description="how far ingestion is; GET .../events streams it as it moves"
    )
    created_at: datetime
    updated_at: datetime

"""Request and response bodies: requests reject unknown fields; responses hold no storage fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from goshen.accounts import Scope
from goshen.db.models import (
    ApiKey,
    JobStatus,
    ModelKind,
    ModelRuntime,
    ModelStatus,
    PricingUnit,
    Role,
    Visibility,
)
from goshen.text import MULTILINE, ONE_LINE

# Free text is ONE_LINE or MULTILINE (goshen.text): no NUL or other control characters.
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), ONE_LINE
]
Email = Annotated[str, StringConstraints(strip_whitespace=True, max_length=320), ONE_LINE]
SpendCap = Annotated[
    int | None,
    Field(
        strict=True,
        ge=0,
        le=10**15,
        description="most this key may spend in a calendar month (UTC), in micro-credits "
        "(1 credit = 1,000,000); past it the key gets 402 while the account's other keys keep "
        "working; null: no cap",
    ),
]
# A name a model is created with, and a name it is called by: a plain one, or an owned model's
# qualified `<owner id>.<name>` (goshen.catalog.candidate_names).
PLAIN_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
CATALOG_NAME_PATTERN = r"^(usr_[0-9A-HJKMNP-TV-Z]{26}\.)?[a-z0-9][a-z0-9-]{1,62}$"
PlainName = Annotated[str, StringConstraints(pattern=PLAIN_NAME_PATTERN)]
CatalogName = Annotated[str, StringConstraints(pattern=CATALOG_NAME_PATTERN)]
Description = Annotated[str, StringConstraints(max_length=2000), MULTILINE]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyCreate(RequestBody):
    name: Name
    scopes: list[Scope] | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="scopes for the new key; default: every scope the owner and this key hold",
    )
    monthly_spend_cap_micros: SpendCap = None


class KeyUpdate(RequestBody):
    """PATCH /v1/keys/{id}: the fields sent change; `monthly_spend_cap_micros: null` removes
    the cap."""

    name: Name | None = None
    monthly_spend_cap_micros: SpendCap = None

    @model_validator(mode="after")
    def _something(self) -> KeyUpdate:
        if not self.model_fields_set:
            raise ValueError("send at least one of name, monthly_spend_cap_micros")
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be null; leave it out to keep it")
        return self


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
    monthly_spend_cap_micros: int | None


class KeyCreated(KeyPublic):
    key: str = Field(description="the secret API key; shown only in this response")

    @classmethod
    def of(cls, key: ApiKey, plaintext: str) -> KeyCreated:
        return cls(**KeyPublic.model_validate(key).model_dump(), key=plaintext)


class UserCreate(RequestBody):
    email: Email
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), ONE_LINE] = ""
    role: Role = Role.developer


class UserUpdate(RequestBody):
    name: (
        Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), ONE_LINE] | None
    ) = None
    role: Role | None = None
    disabled: bool | None = Field(
        default=None, strict=True, description="true disables the user and its keys"
    )
    unmetered: bool | None = Field(
        default=None,
        strict=True,
        description="true: jobs are metered and charged but never refused for want of credit",
    )


class UserPublic(PublicBody):
    id: str
    email: str
    name: str
    role: Role
    unmetered: bool
    created_at: datetime
    disabled_at: datetime | None


ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=200), ONE_LINE]


WebhookUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048), ONE_LINE]
WebhookEvent = Literal["start", "output", "logs", "completed"]


class JobCreate(RequestBody):
    """POST /v1/generate: which model, its input (checked against the model's schema), and an
    optional webhook. Server-owned fields (status, priority, cost, owner) are refused."""

    model: CatalogName = Field(description="a catalog model name, as listed by GET /v1/models")
    input: dict[str, Any] = Field(
        description="the model's input; GET /v1/models/{name} publishes its JSON Schema"
    )
    webhook: WebhookUrl | None = Field(
        default=None, description="an https URL to POST job events to (Standard Webhooks signed)"
    )
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None,
        min_length=1,
        max_length=4,
        description="which events to send; default: start, output, logs and completed",
    )


class JobUrls(BaseModel):
    get: str
    cancel: str
    stream: str


class JobMetrics(BaseModel):
    queue_seconds: float | None = Field(description="from submission to the start of its run")
    run_seconds: float | None = Field(description="from the start of its run to its end")
    device: str | None = Field(description="where it ran")
    peak_memory_bytes: int | None = Field(
        description="peak accelerator memory of its batch (CUDA), or the worker's peak RSS (CPU)"
    )


class OutputImage(BaseModel):
    url: str = Field(
        description="a signed download link; it expires (GOSHEN_SIGNED_URL_TTL_SECONDS)"
    )
    content_type: str
    width: int
    height: int


class JobOutput(BaseModel):
    images: list[OutputImage]


class JobPublic(BaseModel):
    id: str
    model: str
    version: str | None
    status: JobStatus
    input: dict[str, Any]
    output: JobOutput | None
    error: str | None
    logs: str
    progress: dict[str, Any] | None
    attempts: int
    cancel_requested: bool
    webhook: str | None
    webhook_events_filter: list[str]
    cost_micros: int | None
    request_id: str | None = Field(
        default=None,
        description="the id of the request that submitted it (its `X-Request-Id`), which the "
        "platform's log lines about the job carry",
    )
    metrics: JobMetrics
    urls: JobUrls
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class ModelPublic(BaseModel):
    """A catalog entry as developers see it."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    kind: ModelKind
    runtime: ModelRuntime
    description: str
    status: ModelStatus
    live_version: str | None
    visibility: Visibility
    pricing: dict[str, Any]
    input_schema: dict[str, Any]
    examples: list[Any]
    classes: list[str] | None = Field(
        default=None, description="a trained generator's classes, by index: its `label` values"
    )
    owned: bool = Field(default=False, description="whether you own it (a model you trained)")
    trained: dict[str, Any] | None = Field(
        default=None,
        description="for its owner: how the live version was trained (training job, dataset, "
        "metrics, checks); GET /v1/models/{name}/versions lists every version",
    )


class Pricing(RequestBody):
    unit: PricingUnit = Field(description="image, second or request")
    price_micros: int = Field(
        strict=True, ge=0, le=10**12, description="per unit, in micro-credits"
    )


class ModelRegister(RequestBody):
    """POST /v1/admin/models: a catalog entry for an MLflow registered model."""

    name: PlainName = Field(description="what developers call it, in URLs")
    registered_model: Annotated[str, StringConstraints(min_length=1, max_length=200), ONE_LINE]
    alias: Annotated[str, StringConstraints(min_length=1, max_length=100), ONE_LINE] | None = Field(
        default=None, description="follow this alias (e.g. production); or pin `version`"
    )
    version: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")] | None = None
    description: Description = ""
    pricing: Pricing
    visibility: Visibility = Visibility.private
    max_batch_size: int | None = Field(default=None, strict=True, ge=1, le=4096)
    max_wait_ms: float | None = Field(default=None, strict=True, ge=0, le=1000)


class ModelUpdate(RequestBody):
    """PATCH /v1/admin/models/{name}: what may change without a deploy."""

    description: Description | None = None
    pricing: Pricing | None = None
    visibility: Visibility | None = None
    max_batch_size: int | None = Field(default=None, strict=True, ge=1, le=4096)
    max_wait_ms: float | None = Field(default=None, strict=True, ge=0, le=1000)

    @field_validator("description", "pricing", "visibility", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Only given fields are validated: null here would blank a required column. (Batching
        # limits may be null: back to the GOSHEN_PREDICT_* defaults.)
        if value is None:
            raise ValueError("may not be null; leave the field out to keep it")
        return value


class DeployRequest(RequestBody):
    """POST .../deploy: pin a version or follow an alias from now on; empty keeps the entry's."""

    version: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")] | None = None
    alias: Annotated[str, StringConstraints(min_length=1, max_length=100), ONE_LINE] | None = None


class AdminModelPublic(ModelPublic):
    """A catalog entry with what admins manage."""

    id: str
    registered_model: str
    alias: str | None
    pinned_version: str | None
    previous_version: str | None
    status_error: str | None = Field(
        description="why the last deploy failed, after its UTC time; cleared by a deploy that "
        "succeeds. With `status` ready the live version still serves"
    )
    owner_id: str | None
    max_batch_size: int | None
    max_wait_ms: float | None
    deleted_at: datetime | None = Field(
        default=None, description="when its owner deleted it (its name is then free again)"
    )
    created_at: datetime
    updated_at: datetime

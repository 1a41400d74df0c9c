"""What the SDK's `Goshen` and `AsyncGoshen` clients answer: the API's objects as typed, frozen
pydantic models, and a job's server-sent events as one class per kind. Imports only pydantic and
the standard library.

Each model names the fields a program reads and keeps the rest: a field the API adds later is
still there (`job.model_extra`), and `raw` is the object exactly as the API sent it, for
`json.dumps` or a field this SDK does not know yet.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
ENDED: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class Result(BaseModel):
    """An object the API answered: its known fields typed, any other kept (extra="allow")."""

    model_config = ConfigDict(extra="allow", frozen=True)
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def of(cls, body: dict[str, Any]) -> Self:
        """The model of `body`, a JSON object the API answered, keeping it as `raw`."""
        result = cls.model_validate(body)
        result._raw = body
        return result

    @property
    def raw(self) -> dict[str, Any]:
        """The object as the API sent it."""
        return self._raw


class Image(Result):
    """An output image: `url` is a signed, expiring link (`Goshen.download` reads it)."""

    url: str
    content_type: str = "image/png"
    width: int | None = None
    height: int | None = None


class Progress(Result):
    """How far a running job is: `step` of `total`, and the percentage."""

    step: int
    total: int
    percentage: float | None = None


class Job(Result):
    """A generation job. `images` holds its output once it succeeded; `error` why it failed."""

    id: str
    model: str
    version: str | None = None
    status: JobStatus
    input: dict[str, Any] = Field(default_factory=dict)
    output: dict[str, Any] | None = None
    error: str | None = None
    logs: str = ""
    progress: Progress | None = None
    attempts: int = 0
    cost_micros: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def images(self) -> list[Image]:
        return [Image.of(image) for image in (self.output or {}).get("images", [])]


class Prediction(Result):
    """An ONNX model's answer: `outputs` by output name; a classifier's `labels` and
    `probabilities`, one per row."""

    outputs: dict[str, Any] = Field(default_factory=dict)
    labels: list[Any] | None = None
    probabilities: list[Any] | None = None


class Model(Result):
    """A catalog model: its input JSON Schema, examples, pricing and status."""

    name: str
    kind: str
    status: str
    description: str = ""
    live_version: str | None = None
    pricing: dict[str, Any] = Field(default_factory=dict)
    input_schema: dict[str, Any] = Field(default_factory=dict)
    examples: list[Any] = Field(default_factory=list)
    owned: bool = False


class Dataset(Result):
    """An uploaded dataset: `status` is uploaded, validating, ready or failed."""

    id: str
    name: str
    kind: str
    status: str
    size_bytes: int = 0
    file_count: int = 0
    error: str | None = None
    progress: dict[str, Any] | None = None
    created_at: datetime


class TrainingJob(Result):
    """A training job: what it trains, where it is, what it made and cost."""

    id: str
    dataset_id: str | None = None
    task: str
    model_name: str
    status: str
    error: str | None = None
    estimated_cost_micros: int | None = None
    cost_micros: int | None = None
    run_seconds: float | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    links: dict[str, Any] | None = None
    created_at: datetime
    completed_at: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


class ApiKey(Result):
    """An API key. `key`, the secret, is set only in the answer that created it."""

    id: str
    name: str
    prefix: str
    scopes: list[str] = Field(default_factory=list)
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    monthly_spend_cap_micros: int | None = None
    key: str | None = Field(default=None, repr=False)


class Balance(Result):
    """The account's credit, in micro-credits: what jobs may use is `available_micros`."""

    balance_micros: int
    held_micros: int
    available_micros: int
    unmetered: bool = False


class UsageRow(Result):
    """Usage summed over a range, a day (`day`) or a model (`model`)."""

    cost_micros: int
    jobs: int = 0
    requests: int = 0
    images: int = 0
    seconds: float = 0.0
    day: date | None = None
    model: str | None = None


class Usage(Result):
    """Metered usage over [start, end): totals, by day and by model, and the credit now."""

    start: datetime
    end: datetime
    totals: UsageRow
    by_day: list[UsageRow] = Field(default_factory=list)
    by_model: list[UsageRow] = Field(default_factory=list)
    credit: Balance


class LedgerEntry(Result):
    """A line of the account's credit ledger (grant, hold, capture, release, ...)."""

    id: str
    kind: str
    amount_micros: int
    held_micros: int = 0
    job_id: str | None = None
    reason: str = ""
    created_at: datetime


# A job's events, one class per kind; `id` resumes a stream after it (Last-Event-ID).


class Event(BaseModel):
    """A server-sent event of a job; `kind` says which subclass."""

    model_config = ConfigDict(extra="allow", frozen=True)
    id: int
    kind: str


class StatusEvent(Event):
    """The job changed status (`attempt` when it started running; `retry_in_seconds` when it
    went back to the queue to be retried)."""

    kind: Literal["status"] = "status"
    status: JobStatus
    attempt: int | None = None
    retry_in_seconds: float | None = None
    error: str | None = None


class ProgressEvent(Event):
    """A step of the job's run."""

    kind: Literal["progress"] = "progress"
    step: int
    total: int
    percentage: float | None = None


class LogEvent(Event):
    kind: Literal["log"] = "log"
    message: str


class OutputEvent(Event):
    """The job's output, once it succeeded: its images."""

    kind: Literal["output"] = "output"
    images: list[Image] = Field(default_factory=list)


class DoneEvent(Event):
    """The last event: the job ended with `status`."""

    kind: Literal["done"] = "done"
    status: JobStatus
    error: str | None = None


class OtherEvent(Event):
    """An event of a kind this SDK does not know; its data is in `data`."""

    data: dict[str, Any] = Field(default_factory=dict)


EVENT_KINDS: dict[str, type[Event]] = {
    "status": StatusEvent,
    "progress": ProgressEvent,
    "log": LogEvent,
    "output": OutputEvent,
    "done": DoneEvent,
}


def event_of(event_id: int, kind: str, data: dict[str, Any]) -> Event:
    """The typed event of one server-sent event's id, name and JSON data."""
    model = EVENT_KINDS.get(kind)
    if model is None:
        return OtherEvent(id=event_id, kind=kind, data=data)
    return model.model_validate({**data, "id": event_id, "kind": kind})

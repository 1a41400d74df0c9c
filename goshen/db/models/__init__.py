"""The platform database: every table of the data model in DESIGN.md.

Money is stored as integer micro-credits (1 credit = 1_000_000) so sums are exact on every backend.
Every model module is imported here, so `Base.metadata` holds every table (Alembic relies on it).
"""

from goshen.db.models.accounts import ApiKey, Role, User
from goshen.db.models.base import (
    NAMING_CONVENTION,
    Base,
    JSONType,
    UTCDateTime,
    in_sql,
    utcnow,
)
from goshen.db.models.billing import (
    ApiKeySpend,
    CreditBalance,
    CreditLedgerEntry,
    Invoice,
    InvoiceStatus,
    LedgerEntryKind,
    PredictCreditChunk,
    UsageEvent,
)
from goshen.db.models.catalog import (
    Model,
    ModelKind,
    ModelRuntime,
    ModelStatus,
    ModelVersion,
    PricingUnit,
    Visibility,
)
from goshen.db.models.datasets import Dataset, DatasetKind, DatasetStatus
from goshen.db.models.jobs import Job, JobEvent, JobStatus
from goshen.db.models.training import DeployPolicy, TrainingJob, TrainingStatus
from goshen.db.models.webhooks import DeliveryStatus, WebhookDelivery
from goshen.db.models.workers import Worker, WorkerStatus

__all__ = [
    "NAMING_CONVENTION",
    "ApiKey",
    "ApiKeySpend",
    "Base",
    "CreditBalance",
    "CreditLedgerEntry",
    "Dataset",
    "DatasetKind",
    "DatasetStatus",
    "DeliveryStatus",
    "DeployPolicy",
    "Invoice",
    "InvoiceStatus",
    "JSONType",
    "Job",
    "JobEvent",
    "JobStatus",
    "LedgerEntryKind",
    "Model",
    "ModelKind",
    "ModelRuntime",
    "ModelStatus",
    "ModelVersion",
    "PredictCreditChunk",
    "PricingUnit",
    "Role",
    "TrainingJob",
    "TrainingStatus",
    "UTCDateTime",
    "UsageEvent",
    "User",
    "Visibility",
    "WebhookDelivery",
    "Worker",
    "WorkerStatus",
    "in_sql",
    "utcnow",
]

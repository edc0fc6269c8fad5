"""SQLModel tables (table=True classes only). API shapes live in each feature's schemas.py."""

from service.models.tables import (
    ApiKey,
    Checkpoint,
    FineTunedModel,
    IdempotencyRecord,
    Job,
    JobEvent,
    StoredFile,
    Tenant,
    Trial,
)

__all__ = [
    "ApiKey",
    "Checkpoint",
    "FineTunedModel",
    "IdempotencyRecord",
    "Job",
    "JobEvent",
    "StoredFile",
    "Tenant",
    "Trial",
]

"""SQLModel tables (table=True classes only). API shapes live in each feature's schemas.py."""

from service.models.tables import (
    ApiKey,
    Checkpoint,
    Deployment,
    FineTunedModel,
    IdempotencyRecord,
    Job,
    JobEvent,
    RegisteredBaseModel,
    StoredFile,
    Tenant,
    TenantSecret,
    Trial,
    UsageRecord,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "ApiKey",
    "Checkpoint",
    "Deployment",
    "FineTunedModel",
    "IdempotencyRecord",
    "Job",
    "JobEvent",
    "RegisteredBaseModel",
    "StoredFile",
    "Tenant",
    "TenantSecret",
    "Trial",
    "UsageRecord",
    "WebhookDelivery",
    "WebhookEndpoint",
]

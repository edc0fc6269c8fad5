"""Database tables.

Ids are strings with OpenAI-style prefixes. `created_at` is a float of Unix seconds so
that lists have a total order (created_at, id) for cursors; the API shows whole seconds.
Every tenant-owned table carries `tenant_id`, which the repositories filter on.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(unique=True, index=True, max_length=128)
    weight: float = 1.0
    quotas: dict[str, Any] | None = _json()
    created_at: float


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=64)
    name: str | None = Field(default=None, max_length=128)
    # sha256 of the token: the token is 256 random bits, so no slow hash is needed.
    key_hash: str = Field(unique=True, index=True, max_length=64)
    prefix: str = Field(max_length=16)
    created_at: float
    revoked_at: float | None = None


class StoredFile(SQLModel, table=True):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_order", "tenant_id", "created_at", "id"),)

    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(foreign_key="tenants.id", max_length=64)
    filename: str = Field(max_length=512)
    purpose: str = Field(max_length=32)
    bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    storage_key: str = Field(max_length=1024)
    format: str = Field(max_length=32)
    examples: int
    labels: list[str] | None = _json()
    created_at: float


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_order", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
    )

    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(foreign_key="tenants.id", max_length=64)
    status: str = Field(max_length=32)
    model: str = Field(max_length=256)
    task: str = Field(max_length=64)
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    suffix: str | None = Field(default=None, max_length=64)
    seed: int
    priority: int = 0
    hyperparameters: dict[str, Any] | None = _json()
    method: dict[str, Any] | None = _json()
    metadata_: dict[str, Any] | None = Field(
        default=None, sa_column=Column("metadata", JSON, nullable=True)
    )
    adapter: dict[str, Any] | None = _json()
    resources: dict[str, Any] | None = _json()
    search: dict[str, Any] | None = _json()
    # The resolved workers.spec.JobSpec, exactly what the worker will run.
    spec: dict[str, Any] | None = _json()
    fine_tuned_model: str | None = Field(default=None, max_length=512)
    trained_tokens: int | None = Field(default=None, sa_column=Column(BigInteger))
    error: dict[str, Any] | None = _json()
    # For a search: which trial won, on which metric, with what value.
    search_result: dict[str, Any] | None = _json()
    # The final metrics of a succeeded job (train_loss, eval_loss, eval_accuracy, ...).
    result: dict[str, Any] | None = _json()
    result_files: list[str] | None = _json()
    attempts: int = 0
    # Attempts that began with a resume: they are not retries (see max_attempts).
    pauses: int = 0
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float

    def base_model_name(self) -> str:
        """The base model under it: `model` itself, unless the job continued a fine-tuned
        model (then `model` is that model's id and the spec names the base)."""
        return str(((self.spec or {}).get("base_model") or {}).get("name") or self.model)

    def parent_model(self) -> str | None:
        """The fine-tuned model or checkpoint the job continued from, if any."""
        parent = ((self.spec or {}).get("init_from") or {}).get("model")
        return str(parent) if parent else None


class JobEvent(SQLModel, table=True):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    # An integer key gives events a strict order even when many share a timestamp.
    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True, max_length=64)
    job_id: str = Field(foreign_key="jobs.id", max_length=64)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=64)
    level: str = Field(default="info", max_length=16)
    type: str = Field(default="message", max_length=32)
    message: str
    data: dict[str, Any] | None = _json()
    created_at: float


class Checkpoint(SQLModel, table=True):
    __tablename__ = "checkpoints"
    __table_args__ = (
        Index("ix_checkpoints_job_step", "job_id", "step_number"),
        UniqueConstraint("job_id", "step_number", name="uq_checkpoints_job_step"),
    )

    id: str = Field(primary_key=True, max_length=64)
    job_id: str = Field(foreign_key="jobs.id", max_length=64)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=64)
    step_number: int
    metrics: dict[str, Any] | None = _json()
    uri: str = Field(max_length=1024)
    fine_tuned_model_checkpoint: str = Field(max_length=512)
    created_at: float


class Trial(SQLModel, table=True):
    """One trial of a hyperparameter search, as its worker last reported it."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "trial_id", name="uq_trials_job_trial"),)

    id: str = Field(primary_key=True, max_length=128)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=64)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=64)
    trial_id: str = Field(max_length=64)
    status: str = Field(max_length=32)
    params: dict[str, Any] | None = _json()
    # The latest metrics the trial reported, and the best value of the search metric.
    metrics: dict[str, Any] | None = _json()
    best_metric: float | None = None
    iterations: int = 0
    checkpoint_uri: str | None = Field(default=None, max_length=1024)
    created_at: float
    updated_at: float


class FineTunedModel(SQLModel, table=True):
    __tablename__ = "models"
    __table_args__ = (Index("ix_models_tenant_order", "tenant_id", "created_at", "id"),)

    id: str = Field(primary_key=True, max_length=512)
    tenant_id: str = Field(foreign_key="tenants.id", max_length=64)
    job_id: str = Field(foreign_key="jobs.id", max_length=64)
    base_model: str = Field(max_length=256)
    task: str = Field(max_length=64)
    adapter_type: str = Field(max_length=16)
    artifact_uri: str = Field(max_length=1024)
    created_at: float
    deleted_at: float | None = None
    # The model (or checkpoint) its job continued from; None for one trained from a base.
    parent: str | None = Field(default=None, max_length=512)

    @classmethod
    def of_job(cls, job: Job, *, id: str, artifact_uri: str, created_at: float) -> FineTunedModel:
        """A model `job` trained (its final one, or one of its checkpoints)."""
        return cls(
            id=id,
            tenant_id=job.tenant_id,
            job_id=job.id,
            base_model=job.base_model_name(),
            task=job.task,
            adapter_type=str((job.adapter or {}).get("type", "lora")),
            artifact_uri=artifact_uri,
            created_at=created_at,
            parent=job.parent_model(),
        )


class Deployment(SQLModel, table=True):
    """How a fine-tuned model is served: its replica range and autoscaling target."""

    __tablename__ = "deployments"
    __table_args__ = (
        Index("ix_deployments_tenant_order", "tenant_id", "created_at", "id"),
        UniqueConstraint("tenant_id", "model", name="uq_deployments_tenant_model"),
    )

    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(foreign_key="tenants.id", max_length=64)
    model: str = Field(max_length=512)
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    # The generation engine asked for: "auto" (the cluster's choice), "vllm" or "hf".
    engine: str = Field("auto", max_length=8, sa_column_kwargs={"server_default": "auto"})
    created_at: float
    updated_at: float


class RegisteredBaseModel(SQLModel, table=True):
    """A base model an admin registered (beside the built-in catalog). Deleting one
    unregisters it: jobs and models made from it keep the source in their own spec."""

    __tablename__ = "base_models"

    name: str = Field(primary_key=True, max_length=128)
    source: str = Field(max_length=1024)
    tasks: list[str] = _json(nullable=False)
    architecture: str | None = Field(None, max_length=128)
    description: str = Field("", max_length=1024)
    learning_rate: dict[str, float] = _json(nullable=False)
    max_length: int
    chat: bool
    created_at: float


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_keys"

    # Scope is the tenant id, or "admin"; the key is the client's Idempotency-Key header.
    scope: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    endpoint: str = Field(max_length=255)
    fingerprint: str = Field(max_length=64)
    status_code: int
    body: dict[str, Any] | None = _json()
    created_at: float


class UsageRecord(SQLModel, table=True):
    """What one job, one trial of a search, or one inference request used.

    A job's and a trial's rows have ids made from the job's (and trial's) id, so recording
    them again (a retried attempt, a restarted control plane) cannot count them twice.
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_tenant_time", "tenant_id", "created_at"),
        Index("ix_usage_records_time", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=160)
    tenant_id: str = Field(foreign_key="tenants.id", max_length=64)
    # "training" or "inference" (service.usage.UsageKind).
    kind: str = Field(max_length=16)
    model: str = Field(max_length=512)
    job_id: str | None = Field(default=None, max_length=64)
    trial_id: str | None = Field(default=None, max_length=64)
    requests: int = 0
    prompt_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    completion_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    trained_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    worker_seconds: float = 0.0
    gpu_seconds: float = 0.0
    created_at: float


class WebhookEndpoint(SQLModel, table=True):
    """A URL a tenant asked to be told of events at, with the secret that signs them."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_order", "tenant_id", "created_at", "id"),)

    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(foreign_key="tenants.id", max_length=64)
    url: str = Field(max_length=2048)
    # Standard Webhooks' `whsec_<base64>`: signing needs the secret itself, not a hash.
    secret: str = Field(max_length=256)
    event_types: list[str] = _json(nullable=False)
    description: str | None = Field(default=None, max_length=512)
    created_at: float


class WebhookDelivery(SQLModel, table=True):
    """The outbox: one event to one endpoint, written in the transaction of the change it
    tells of, and sent (at least once) by the webhook sender loop."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (
        Index("ix_webhook_outbox_due", "status", "next_attempt_at"),
        Index("ix_webhook_outbox_endpoint", "endpoint_id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    # The event's id: the `webhook-id` header, the same on every attempt and endpoint.
    event_id: str = Field(max_length=64)
    endpoint_id: str = Field(max_length=64)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=64)
    event_type: str = Field(max_length=64)
    payload: dict[str, Any] = _json(nullable=False)
    status: str = Field(max_length=16)
    attempts: int = 0
    next_attempt_at: float
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=1024)
    delivered_at: float | None = None
    created_at: float


class TenantSecret(SQLModel, table=True):
    """A named secret of a tenant (a tracker's API key or token): written, used by its
    jobs' workers, never read back through the API."""

    __tablename__ = "tenant_secrets"

    tenant_id: str = Field(foreign_key="tenants.id", primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=128)
    value: str
    created_at: float
    updated_at: float

"""initial schema

Revision 0001 (2026-11-22): tenants and their keys, files, jobs with their events and
checkpoints, fine-tuned models, and the answers kept for Idempotency-Keys.
"""

import sqlalchemy as sa
from alembic import op

from service.migrations import columns as c

revision: str = "0001"
down_revision: str | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        c.ident("scope"),
        c.string("key", 255),
        c.string("endpoint", 255),
        c.string("fingerprint", 64),
        c.integer("status_code"),
        c.document("body"),
        c.timestamp(),
        sa.PrimaryKeyConstraint("scope", "key"),
    )
    op.create_table(
        "tenants",
        c.ident(),
        c.string("name", 128),
        c.real("weight"),
        c.document("quotas"),
        c.timestamp(),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tenants_name"), ["name"], unique=True)

    op.create_table(
        "api_keys",
        c.ident(),
        c.ident("tenant_id"),
        c.string("name", 128, null=True),
        c.string("key_hash", 64),
        c.string("prefix", 16),
        c.timestamp(),
        c.timestamp("revoked_at", null=True),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_key_hash"), ["key_hash"], unique=True)
        batch_op.create_index(batch_op.f("ix_api_keys_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "files",
        c.ident(),
        c.ident("tenant_id"),
        c.string("filename", 512),
        c.string("purpose", 32),
        c.big_integer("bytes"),
        c.string("storage_key", 1024),
        c.string("format", 32),
        c.integer("examples"),
        c.document("labels"),
        c.timestamp(),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("id"),
    )
    c.add_tenant_order("files")

    op.create_table(
        "jobs",
        c.ident(),
        c.ident("tenant_id"),
        c.string("status", 32),
        c.string("model", 256),
        c.string("task", 64),
        c.ident("training_file"),
        c.string("validation_file", 64, null=True),
        c.string("suffix", 64, null=True),
        c.integer("seed"),
        c.integer("priority"),
        c.document("hyperparameters"),
        c.document("method"),
        c.document("metadata"),
        c.document("adapter"),
        c.document("resources"),
        c.document("search"),
        c.document("spec"),
        c.string("fine_tuned_model", 512, null=True),
        c.big_integer("trained_tokens", null=True),
        c.document("error"),
        c.document("result_files"),
        c.integer("attempts"),
        c.timestamp(),
        c.timestamp("started_at", null=True),
        c.timestamp("finished_at", null=True),
        c.timestamp("updated_at"),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_status", ["status"], unique=False)
    c.add_tenant_order("jobs")

    op.create_table(
        "checkpoints",
        c.ident(),
        c.ident("job_id"),
        c.ident("tenant_id"),
        c.integer("step_number"),
        c.document("metrics"),
        c.string("uri", 1024),
        c.string("fine_tuned_model_checkpoint", 512),
        c.timestamp(),
        c.owner("jobs"),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "step_number", name="uq_checkpoints_job_step"),
    )
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.create_index("ix_checkpoints_job_step", ["job_id", "step_number"], unique=False)
        batch_op.create_index(batch_op.f("ix_checkpoints_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "job_events",
        c.integer("seq"),
        c.ident(),
        c.ident("job_id"),
        c.ident("tenant_id"),
        c.string("level", 16),
        c.string("type", 32),
        c.string("message"),
        c.document("data"),
        c.timestamp(),
        c.owner("jobs"),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.create_index("ix_job_events_job_seq", ["job_id", "seq"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_events_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "models",
        c.string("id", 512),
        c.ident("tenant_id"),
        c.ident("job_id"),
        c.string("base_model", 256),
        c.string("task", 64),
        c.string("adapter_type", 16),
        c.string("artifact_uri", 1024),
        c.timestamp(),
        c.timestamp("deleted_at", null=True),
        c.owner("jobs"),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("id"),
    )
    c.add_tenant_order("models")


def downgrade() -> None:
    c.drop_tenant_order("models")
    op.drop_table("models")
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_events_tenant_id"))
        batch_op.drop_index("ix_job_events_job_seq")

    op.drop_table("job_events")
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_checkpoints_tenant_id"))
        batch_op.drop_index("ix_checkpoints_job_step")

    op.drop_table("checkpoints")
    c.drop_tenant_order("jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status")

    op.drop_table("jobs")
    c.drop_tenant_order("files")
    op.drop_table("files")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_api_keys_key_hash"))

    op.drop_table("api_keys")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tenants_name"))

    op.drop_table("tenants")
    op.drop_table("idempotency_keys")

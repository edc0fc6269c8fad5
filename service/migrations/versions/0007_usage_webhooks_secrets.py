"""usage records, webhook endpoints and their outbox, tenant secrets

Revision 0007 (2026-12-05), after 0006. Usage: what each job, trial and inference request
used. Webhooks: a tenant's endpoints, and the outbox of events for them, written in the
transaction of the change each tells of. Secrets: tracker credentials a tenant's jobs use.
"""

import sqlalchemy as sa
from alembic import op

from service.migrations import columns as c

revision: str = "0007"
down_revision: str | None = "0006"


def upgrade() -> None:
    op.create_table(
        "usage_records",
        c.ident("id", 160),
        c.ident("tenant_id"),
        c.string("kind", 16),
        c.string("model", 512),
        c.string("job_id", 64, null=True),
        c.string("trial_id", 64, null=True),
        c.integer("requests"),
        c.big_integer("prompt_tokens"),
        c.big_integer("completion_tokens"),
        c.big_integer("trained_tokens"),
        c.real("worker_seconds"),
        c.real("gpu_seconds"),
        c.timestamp(),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_records_tenant_time", ["tenant_id", "created_at"], unique=False
        )
        batch_op.create_index("ix_usage_records_time", ["created_at"], unique=False)

    op.create_table(
        "webhook_endpoints",
        c.ident(),
        c.ident("tenant_id"),
        c.string("url", 2048),
        c.string("secret", 256),
        c.document("event_types", null=False),
        c.string("description", 512, null=True),
        c.timestamp(),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("id"),
    )
    c.add_tenant_order("webhook_endpoints")

    op.create_table(
        "webhook_outbox",
        c.ident(),
        c.ident("event_id"),
        c.ident("endpoint_id"),
        c.ident("tenant_id"),
        c.string("event_type", 64),
        c.document("payload", null=False),
        c.string("status", 16),
        c.integer("attempts"),
        c.timestamp("next_attempt_at"),
        c.integer("last_status_code", null=True),
        c.string("last_error", 1024, null=True),
        c.timestamp("delivered_at", null=True),
        c.timestamp(),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_outbox", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_outbox_due", ["status", "next_attempt_at"])
        batch_op.create_index("ix_webhook_outbox_endpoint", ["endpoint_id"])
        batch_op.create_index(batch_op.f("ix_webhook_outbox_tenant_id"), ["tenant_id"])

    op.create_table(
        "tenant_secrets",
        c.ident("tenant_id"),
        c.string("name", 128),
        c.string("value"),
        c.timestamp(),
        c.timestamp("updated_at"),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("tenant_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("tenant_secrets")
    with op.batch_alter_table("webhook_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_outbox_tenant_id"))
        batch_op.drop_index("ix_webhook_outbox_endpoint")
        batch_op.drop_index("ix_webhook_outbox_due")
    op.drop_table("webhook_outbox")
    c.drop_tenant_order("webhook_endpoints")
    op.drop_table("webhook_endpoints")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_time")
        batch_op.drop_index("ix_usage_records_tenant_time")
    op.drop_table("usage_records")

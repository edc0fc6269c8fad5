"""deployments

Revision 0003 (2026-11-22), after 0002: a tenant's serving policy per fine-tuned model.
"""

import sqlalchemy as sa
from alembic import op

from service.migrations import columns as c

revision: str = "0003"
down_revision: str | None = "0002"


def upgrade() -> None:
    op.create_table(
        "deployments",
        c.ident(),
        c.ident("tenant_id"),
        c.string("model", 512),
        c.integer("min_replicas"),
        c.integer("max_replicas"),
        c.real("target_ongoing_requests"),
        c.timestamp(),
        c.timestamp("updated_at"),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "model", name="uq_deployments_tenant_model"),
    )
    c.add_tenant_order("deployments")


def downgrade() -> None:
    c.drop_tenant_order("deployments")
    op.drop_table("deployments")

"""search trials

Revision 0002 (2026-11-22), after 0001: the trials of a hyperparameter search, and the
search's result on its job.
"""

import sqlalchemy as sa
from alembic import op

from service.migrations import columns as c

revision: str = "0002"
down_revision: str | None = "0001"


def upgrade() -> None:
    op.create_table(
        "trials",
        c.string("id", 128),
        c.ident("job_id"),
        c.ident("tenant_id"),
        c.ident("trial_id"),
        c.string("status", 32),
        c.document("params"),
        c.document("metrics"),
        c.real("best_metric", null=True),
        c.integer("iterations"),
        c.string("checkpoint_uri", 1024, null=True),
        c.timestamp(),
        c.timestamp("updated_at"),
        c.owner("jobs"),
        c.owner("tenants"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "trial_id", name="uq_trials_job_trial"),
    )
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_trials_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_trials_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(c.document("search_result"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("search_result")

    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trials_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_trials_job_id"))

    op.drop_table("trials")

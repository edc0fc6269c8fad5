"""base models registered by admins; jobs keep their final metrics

Revision 0004 (2026-12-04), after 0003.
"""

import sqlalchemy as sa
from alembic import op

from service.migrations import columns as c

revision: str = "0004"
down_revision: str | None = "0003"


def upgrade() -> None:
    op.create_table(
        "base_models",
        c.string("name", 128),
        c.string("source", 1024),
        c.document("tasks", null=False),
        c.string("architecture", 128, null=True),
        c.string("description", 1024),
        c.document("learning_rate", null=False),
        c.integer("max_length"),
        c.flag("chat"),
        c.timestamp(),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(c.document("result"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("result")
    op.drop_table("base_models")

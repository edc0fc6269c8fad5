"""models record the model they continued from

Revision 0006 (2026-12-04), after 0005. A job may continue one of the tenant's fine-tuned
models or checkpoints; its model's `parent` is that model's id, from which GET
/v1/models/{id} shows the lineage.
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("parent")

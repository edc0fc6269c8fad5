"""deployments name their generation engine

Revision 0008 (2026-12-05), after 0007. A deployment may ask for the engine its model is
generated with: `auto` (the cluster's choice), `vllm` or `hf`. Existing deployments are
`auto`, what they ran before.
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("engine", sa.String(length=8), nullable=False, server_default="auto")
        )


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("engine")

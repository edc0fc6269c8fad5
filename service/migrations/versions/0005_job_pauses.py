"""jobs count their pauses

Revision 0005 (2026-12-04), after 0004. A resumed job starts a new Ray job (a new
attempt); `pauses` is how many of its attempts began with a resume, so only the others
count against `max_attempts`.
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pauses", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("pauses")

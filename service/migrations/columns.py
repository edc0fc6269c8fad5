"""Column, key and index shorthands for the migration scripts in versions/.

A migration is applied history: what it creates must stay exactly what it created. These
helpers only spell the kinds of column the tables repeat (string ids, the owning tenant
and job, float timestamps, JSON documents) shorter; each returns the `sa.Column` or
constraint the scripts used to write out in full. Never change what one returns: that
would change what an old migration does to a new database. A new kind is a new helper.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Object ids (`service.common.new_id`) and the references to them.
ID_LENGTH = 64


def string(name: str, length: int | None = None, *, null: bool = False) -> sa.Column:
    """VARCHAR(length), or unbounded text without a length."""
    return sa.Column(name, sa.String(length=length), nullable=null)


def ident(name: str = "id", length: int = ID_LENGTH) -> sa.Column:
    """An object id, or a reference to one: a string that is never null."""
    return string(name, length)


def integer(name: str, *, null: bool = False) -> sa.Column:
    return sa.Column(name, sa.Integer(), nullable=null)


def big_integer(name: str, *, null: bool = False) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=null)


def real(name: str, *, null: bool = False) -> sa.Column:
    return sa.Column(name, sa.Float(), nullable=null)


def flag(name: str) -> sa.Column:
    return sa.Column(name, sa.Boolean(), nullable=False)


def document(name: str, *, null: bool = True) -> sa.Column:
    """A JSON document (a spec, metrics, options): null unless said otherwise."""
    return sa.Column(name, sa.JSON(), nullable=null)


def timestamp(name: str = "created_at", *, null: bool = False) -> sa.Column:
    """Seconds since the epoch, as a float (`service.common.now`)."""
    return real(name, null=null)


def owner(table: str) -> sa.ForeignKeyConstraint:
    """The row belongs to a `table` row: `<table without s>_id` references `<table>.id`."""
    return sa.ForeignKeyConstraint([f"{table.removesuffix('s')}_id"], [f"{table}.id"])


def add_tenant_order(table: str) -> None:
    """The index a tenant's list of `table` pages on, by (created_at, id)."""
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.create_index(
            f"ix_{table}_tenant_order", ["tenant_id", "created_at", "id"], unique=False
        )


def drop_tenant_order(table: str) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.drop_index(f"ix_{table}_tenant_order")

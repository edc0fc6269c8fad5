from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

import service.models  # noqa: F401  (registers the tables)
from service import db


def test_migrations_match_the_models(database_url: str) -> None:
    # database_url for PostgreSQL is already migrated from the template; SQLite is fresh.
    db.upgrade(database_url)
    db.upgrade(database_url)  # a second run is a no-op
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == []
    assert {"tenants", "api_keys", "files", "jobs", "job_events", "checkpoints", "models"} <= tables

"""When every database connection is busy the API answers 503 with Retry-After (the
service is overloaded, not broken), never a 500."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from service.config import Settings
from service.main import create_app
from tests.factories import make_tenant, upload_ok
from tests.fixtures.app import ADMIN_KEY


def test_no_free_database_connection_is_a_503_with_retry_after(settings: Settings) -> None:
    app: FastAPI = create_app(settings)
    with TestClient(app) as client:
        t = make_tenant(client)
        app.state.engine = create_engine(
            settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.2
        )
        held = app.state.engine.connect()  # the one connection, taken
        try:
            r = client.get("/v1/fine_tuning/jobs", headers=t.headers)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "service_unavailable"
        finally:
            held.close()
        assert client.get("/v1/fine_tuning/jobs", headers=t.headers).status_code == 200
        app.state.engine.dispose()


def test_sqlite_write_lock_held_past_the_busy_timeout_is_a_503(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN_KEY)
    app: FastAPI = create_app(settings)
    with TestClient(app) as client:
        t = make_tenant(client)
        file_id = upload_ok(client, t)
        app.state.engine = create_engine(settings.database_url, connect_args={"timeout": 0.2})
        other = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
        try:
            r = client.post(
                "/v1/fine_tuning/jobs",
                json={"model": "tiny-gpt2", "training_file": file_id},
                headers=t.headers,
            )
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "service_unavailable"
        finally:
            other.rollback()
            other.close()
        app.state.engine.dispose()

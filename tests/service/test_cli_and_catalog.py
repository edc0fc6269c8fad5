from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner, Result

from service.cli import app as cli
from service.config import Settings, get_settings
from service.main import create_app
from tests.factories import create_job, make_tenant, upload_ok


def _db_upgrade(monkeypatch: pytest.MonkeyPatch, url: str) -> Result:
    """`tuneplane db upgrade` with TUNEPLANE_DATABASE_URL set, as a user runs it."""
    monkeypatch.setenv("TUNEPLANE_DATABASE_URL", url)
    get_settings.cache_clear()  # settings are read once per process
    try:
        return CliRunner().invoke(cli, ["db", "upgrade"])
    finally:
        get_settings.cache_clear()


def test_db_upgrade_command_creates_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = _db_upgrade(monkeypatch, url)
    assert result.exit_code == 0, result.output
    assert "cli.db" in result.output
    engine = create_engine(url)
    assert {"jobs", "files", "tenants"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_db_upgrade_never_prints_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr("service.db.upgrade", lambda url, rev: calls.append(url))
    result = _db_upgrade(monkeypatch, "postgresql+psycopg://u:s3cret@127.0.0.1:1/x")
    assert result.exit_code == 0, result.output
    assert calls == ["postgresql+psycopg://u:s3cret@127.0.0.1:1/x"]
    assert "s3cret" not in result.output
    assert "127.0.0.1" in result.output


def test_a_catalog_file_replaces_the_embedded_one(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        json.dumps(
            {
                "models": [
                    {
                        "name": "meta-llama/Llama-3.2-1B",
                        "source": "meta-llama/Llama-3.2-1B",
                        "tasks": ["causal_lm"],
                        "architecture": "llama",
                    },
                    {
                        "name": "local-bert",
                        "source": str(tmp_path),
                        "tasks": ["sequence_classification"],
                    },
                ]
            }
        )
    )
    settings = Settings(
        data_dir=tmp_path / "data", admin_key="test-admin-key", catalog_path=catalog
    )
    with TestClient(create_app(settings)) as client:
        t = make_tenant(client)
        ids = {m["id"] for m in client.get("/v1/models", headers=t.headers).json()["data"]}
        assert ids == {"meta-llama/Llama-3.2-1B", "local-bert"}
        one = client.get("/v1/models/meta-llama/Llama-3.2-1B", headers=t.headers).json()
        assert one["task"] == "causal_lm"
        job = create_job(
            client, t, model="meta-llama/Llama-3.2-1B", training_file=upload_ok(client, t)
        )
        assert job.status_code == 200, job.text
        assert job.json()["model"] == "meta-llama/Llama-3.2-1B"
        assert create_job(client, t, model="tiny-gpt2").json()["error"]["param"] == "model"

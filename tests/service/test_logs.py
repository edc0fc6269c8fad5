"""JSON logs: every line one object; request lines and job lines carry their ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.factories import create_job_ok, make_tenant
from tests.fixtures.app import ADMIN_KEY


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_requests_and_job_changes_log_json_with_their_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path, admin_key=ADMIN_KEY)
    with TestClient(create_app(settings)) as client:
        tenant = make_tenant(client)
        job_id = create_job_ok(client, tenant)["id"]
        given = client.get(
            f"/v1/fine_tuning/jobs/{job_id}", headers={**tenant.headers, "X-Request-ID": "req-42"}
        )
        assert given.headers["x-request-id"] == "req-42"
        cancel = client.post(
            f"/v1/fine_tuning/jobs/{job_id}/cancel",
            headers={**tenant.headers, "X-Request-ID": "bad id <script>"},
        )
        minted = cancel.headers["x-request-id"]
        assert minted != "bad id <script>" and len(minted) == 32
    lines = json_lines(capsys.readouterr().err)
    assert lines, "no JSON log lines"
    access = [x for x in lines if x["logger"] == "tuneplane.access"]
    got = next(x for x in access if x["request_id"] == "req-42")
    assert got["job_id"] == job_id and got["status"] == 200 and got["method"] == "GET"
    assert got["path"] == f"/v1/fine_tuning/jobs/{job_id}" and got["duration_ms"] >= 0
    # The state change made inside the cancel request: its job id and that request's id.
    change = next(x for x in lines if x.get("status") == "cancelled" and "tenant_id" in x)
    assert change["job_id"] == job_id and change["request_id"] == minted
    assert all({"ts", "level", "logger", "message"} <= set(x) for x in lines)


def test_text_logs_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path, log_format="text")
    with TestClient(create_app(settings)) as client:
        client.get("/v1/models")
    err = capsys.readouterr().err
    assert "GET /v1/models 401" in err
    assert json_lines(err) == []

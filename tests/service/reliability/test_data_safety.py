"""Data safety: an upload is never visible half-written (in flight, or cut off); a file a
queued, running or cancelling job uses cannot be deleted; migrations run forward over a
populated database and the service reads everything back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from alembic import command
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from service import db
from service.config import Settings
from service.jobs.state import transition
from service.main import create_app
from service.models.status import JobStatus
from service.stack import free_port
from tests.factories import (
    ADMIN,
    add_model,
    create_job_ok,
    jsonl,
    make_tenant,
    text_records,
    upload_ok,
)
from tests.fixtures.app import ADMIN_KEY


@pytest.fixture
def live_api(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """The API under a real uvicorn (in a thread), so a client can pause mid-upload."""
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN_KEY)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield url, settings
    server.should_exit = True
    thread.join(timeout=10)


def _multipart(boundary: str, parts: list[bytes], gate: threading.Event | None) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    yield parts[0]
    if gate is not None:
        gate.wait(30)
    yield from parts[1:]
    yield f"\r\n--{boundary}--\r\n".encode()


def _stored(settings: Settings, tenant_id: str) -> list[Path]:
    root = Path(settings.data_dir) / "artifacts" / tenant_id
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_an_upload_in_flight_is_invisible_until_it_is_complete(
    live_api: tuple[str, Settings],
) -> None:
    url, settings = live_api
    http = httpx.Client(base_url=url, timeout=60)
    created = http.post("/v1/admin/tenants", json={"name": "uploader"}, headers=ADMIN).json()
    tenant_id, headers = created["tenant"]["id"], {"Authorization": f"Bearer {created['api_key']}"}
    content = jsonl(text_records(2000))
    half = len(content) // 2
    gate = threading.Event()
    result: dict[str, Any] = {}
    boundary = "tuneplane-test-boundary"

    def send() -> None:
        r = httpx.post(
            f"{url}/v1/files",
            content=_multipart(boundary, [content[:half], content[half:]], gate),
            headers={**headers, "content-type": f"multipart/form-data; boundary={boundary}"},
            timeout=60,
        )
        result["response"] = r

    sender = threading.Thread(target=send)
    sender.start()
    try:
        time.sleep(0.5)  # half the file is on the wire; the rest waits for the gate
        assert http.get("/v1/files", headers=headers).json()["data"] == []
        assert _stored(settings, tenant_id) == []
    finally:
        gate.set()
        sender.join(60)
    r = result["response"]
    assert r.status_code == 200, r.text
    file_id = r.json()["id"]
    assert r.json()["bytes"] == len(content)
    assert [f["id"] for f in http.get("/v1/files", headers=headers).json()["data"]] == [file_id]
    assert http.get(f"/v1/files/{file_id}/content", headers=headers).content == content
    # One complete object in storage, no partial one beside it.
    assert [p.name for p in _stored(settings, tenant_id)] == [f"{file_id}.jsonl"]


def test_an_upload_cut_off_midway_leaves_nothing(live_api: tuple[str, Settings]) -> None:
    url, settings = live_api
    http = httpx.Client(base_url=url, timeout=60)
    created = http.post("/v1/admin/tenants", json={"name": "cutoff"}, headers=ADMIN).json()
    tenant_id, headers = created["tenant"]["id"], {"Authorization": f"Bearer {created['api_key']}"}
    content = jsonl(text_records(2000))
    boundary = "tuneplane-test-boundary"

    def broken() -> Iterator[bytes]:
        chunks = _multipart(boundary, [content[: len(content) // 2], content], None)
        yield next(chunks)
        yield next(chunks)
        raise ConnectionError("the client went away")

    with pytest.raises(ConnectionError):  # the body's own error, out of httpx
        httpx.post(
            f"{url}/v1/files",
            content=broken(),
            headers={**headers, "content-type": f"multipart/form-data; boundary={boundary}"},
            timeout=30,
        )
    assert http.get("/v1/files", headers=headers).json()["data"] == []
    assert _stored(settings, tenant_id) == []
    assert http.get("/healthz").status_code == 200
    # The next upload goes through as usual.
    r = http.post(
        "/v1/files",
        files={"file": ("t.jsonl", content, "text/plain")},
        data={"purpose": "fine-tune"},
        headers=headers,
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("status", ["queued", "running", "cancelling", "paused"])
def test_a_file_an_unfinished_job_uses_cannot_be_deleted(
    client: TestClient, app: FastAPI, status: str
) -> None:
    t = make_tenant(client)
    training = upload_ok(client, t)
    validation = upload_ok(client, t)
    job_id = create_job_ok(client, t, training_file=training, validation_file=validation)["id"]
    with Session(app.state.engine) as s:
        steps = {
            "queued": [],
            "running": ["running"],
            "cancelling": ["running", "cancelling"],
            "paused": ["running", "pausing", "paused"],
        }
        for step in steps[status]:
            assert transition(s, job_id, JobStatus(step))
        s.commit()
    for file_id in (training, validation):
        r = client.delete(f"/v1/files/{file_id}", headers=t.headers)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "file_in_use"
        assert job_id in r.json()["error"]["message"]
        assert client.get(f"/v1/files/{file_id}/content", headers=t.headers).status_code == 200
    # Once the job has ended, the files may go.
    with Session(app.state.engine) as s:
        end = "cancelled" if status in ("queued", "cancelling", "paused") else "failed"
        assert transition(s, job_id, JobStatus(end))
        s.commit()
    for file_id in (training, validation):
        assert client.delete(f"/v1/files/{file_id}", headers=t.headers).status_code == 200


def test_migrations_run_forward_over_a_populated_database(
    settings: Settings, database_url: str
) -> None:
    app = create_app(settings)
    with TestClient(app) as client:
        a = make_tenant(client, "before", quotas={"max_running_jobs": 2})
        content = jsonl(text_records(8))
        file_id = upload_ok(client, a, content)
        job = create_job_ok(client, a, training_file=file_id, suffix="m", seed=7)
        cancelled = create_job_ok(client, a, training_file=file_id)["id"]
        client.post(f"/v1/fine_tuning/jobs/{cancelled}/cancel", headers=a.headers)
        model_id = f"ft:tiny-gpt2:before:m:{job['id']}"
        add_model(app.state.engine, a, job["id"], model_id)
        events_before = client.get(
            f"/v1/fine_tuning/jobs/{cancelled}/events", headers=a.headers
        ).json()["data"]
    app.state.engine.dispose()

    # Back to the first revision with the rows in place, then forward again to head.
    command.downgrade(db.alembic_config(database_url), "0001")
    db.upgrade(database_url)

    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get(f"/v1/files/{file_id}", headers=a.headers).json()["bytes"] == len(content)
        assert client.get(f"/v1/files/{file_id}/content", headers=a.headers).content == content
        got = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=a.headers).json()
        assert (got["status"], got["seed"], got["suffix"]) == ("queued", 7, "m")
        assert got["hyperparameters"] == job["hyperparameters"]
        assert got["search_result"] is None  # the column 0002 added, empty for old rows
        assert client.get(f"/v1/fine_tuning/jobs/{cancelled}", headers=a.headers).json()[
            "status"
        ] == ("cancelled")
        events = client.get(f"/v1/fine_tuning/jobs/{cancelled}/events", headers=a.headers)
        assert events.json()["data"] == events_before
        assert client.get(f"/v1/models/{model_id}", headers=a.headers).status_code == 200
        tenant = client.get(f"/v1/admin/tenants/{a.id}", headers=ADMIN).json()
        assert tenant["quotas"]["max_running_jobs"] == 2
        # New tables work on the old data: trials of an old job, a deployment of its model.
        trials = client.get(f"/v1/fine_tuning/jobs/{job['id']}/trials", headers=a.headers)
        assert trials.json()["data"] == []
        r = client.post("/v1/deployments", json={"model": model_id}, headers=a.headers)
        assert r.status_code == 200, r.text
        # And the service goes on writing.
        create_job_ok(client, a, training_file=file_id)
    app.state.engine.dispose()

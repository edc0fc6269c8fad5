"""Tenant B must never see, change, or learn of tenant A's objects: always 404, never 403."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.factories import add_model, create_job_ok, make_tenant, upload_ok


def test_another_tenants_objects_are_404_and_never_listed(client: TestClient, app: FastAPI) -> None:
    a = make_tenant(client, "alpha")
    b = make_tenant(client, "beta")
    file_a = upload_ok(client, a)
    job_a = create_job_ok(client, a, training_file=file_a)["id"]
    model_a = f"ft:tiny-gpt2:alpha::{job_a}"
    add_model(app.state.engine, a, job_a, model_a)
    # B owns something too, so lists are not trivially empty.
    file_b = upload_ok(client, b)
    job_b = create_job_ok(client, b, training_file=file_b)["id"]

    for method, path in [
        ("GET", f"/v1/files/{file_a}"),
        ("GET", f"/v1/files/{file_a}/content"),
        ("DELETE", f"/v1/files/{file_a}"),
        ("GET", f"/v1/fine_tuning/jobs/{job_a}"),
        ("POST", f"/v1/fine_tuning/jobs/{job_a}/cancel"),
        ("GET", f"/v1/fine_tuning/jobs/{job_a}/events"),
        ("GET", f"/v1/fine_tuning/jobs/{job_a}/checkpoints"),
        ("GET", f"/v1/models/{model_a}"),
        ("DELETE", f"/v1/models/{model_a}"),
    ]:
        r = client.request(method, path, headers=b.headers)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert a.id not in r.text

    # A's file is "not found" for B's job too, exactly like a file that does not exist.
    r = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-gpt2", "training_file": file_a},
        headers=b.headers,
    )
    missing = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-gpt2", "training_file": "file-000000000000000000000000"},
        headers=b.headers,
    )
    assert r.status_code == missing.status_code == 400
    assert r.json()["error"]["code"] == missing.json()["error"]["code"] == "file_not_found"

    # Cursors from A's lists are not valid in B's.
    r = client.get("/v1/fine_tuning/jobs", params={"after": job_a}, headers=b.headers)
    assert r.status_code == 400

    files_b = client.get("/v1/files", headers=b.headers).json()["data"]
    jobs_b = client.get("/v1/fine_tuning/jobs", headers=b.headers).json()["data"]
    models_b = client.get("/v1/models", headers=b.headers).json()["data"]
    assert [f["id"] for f in files_b] == [file_b]
    assert [j["id"] for j in jobs_b] == [job_b]
    assert model_a not in {m["id"] for m in models_b}

    # A still has everything, untouched.
    assert client.get(f"/v1/files/{file_a}", headers=a.headers).status_code == 200
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job_a}", headers=a.headers).json()["status"] == "queued"
    )
    models_a = {m["id"] for m in client.get("/v1/models", headers=a.headers).json()["data"]}
    assert {model_a, "tiny-gpt2", "tiny-bert"} <= models_a
    assert client.get(f"/v1/models/{model_a}", headers=a.headers).json()["owned_by"] == a.id


def test_models_list_retrieve_delete(client: TestClient, app: FastAPI) -> None:
    a = make_tenant(client)
    job = create_job_ok(client, a)["id"]
    model_id = f"ft:tiny-gpt2:{a.name}:x:{job}"
    add_model(app.state.engine, a, job, model_id)
    got = client.get(f"/v1/models/{model_id}", headers=a.headers).json()
    assert got["object"] == "model"
    assert got["fine_tuning_job"] == job
    base = client.get("/v1/models/tiny-bert", headers=a.headers).json()
    assert base["owned_by"] == "tuneplane"
    assert base["task"] == "sequence_classification"
    assert client.delete("/v1/models/tiny-gpt2", headers=a.headers).status_code == 403
    r = client.delete(f"/v1/models/{model_id}", headers=a.headers)
    assert r.json() == {"id": model_id, "object": "model", "deleted": True}
    assert client.get(f"/v1/models/{model_id}", headers=a.headers).status_code == 404
    ids = {m["id"] for m in client.get("/v1/models", headers=a.headers).json()["data"]}
    assert model_id not in ids
    assert client.get("/v1/models/org/unknown-model", headers=a.headers).status_code == 404

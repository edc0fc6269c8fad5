"""The tenant isolation matrix over every operation of the OpenAPI schema (so a new endpoint
is in it the day it is added): tenant B with tenant A's ids gets 404, exactly like an id
that does not exist; B's lists never hold A's objects; missing, wrong and revoked keys are
refused everywhere; tenant keys never reach admin endpoints, nor the admin key tenant ones.
tests/service/test_isolation.py checks the same by hand for files, jobs and models."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.factories import ADMIN, TenantHandle, add_model, create_job_ok, make_tenant, upload_ok

NOT_A_KEY = {"Authorization": "Bearer tp-this-key-was-never-issued"}


def _operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    schema = client.get("/openapi.json").json()
    return [
        (method.upper(), path, op)
        for path, item in schema["paths"].items()
        if path.startswith("/v1/")
        for method, op in item.items()
    ]


def _owned(client: TestClient, t: TenantHandle) -> dict[str, str]:
    """One of each object a tenant can own, by the path parameter that names it."""
    file_id = upload_ok(client, t)
    job_id = create_job_ok(client, t, training_file=file_id, suffix="x")["id"]
    model_id = f"ft:tiny-gpt2:{t.name}:x:{job_id}"
    add_model(client.app.state.engine, t, job_id, model_id)  # type: ignore[attr-defined]
    ids = {"file_id": file_id, "job_id": job_id, "model_id": model_id, "tenant_id": t.id}
    # A classifier too (no path takes one, but inference bodies name it).
    cls_job = create_job_ok(client, t, training_file=file_id, suffix="cls")["id"]
    ids["classifier_id"] = f"ft:tiny-bert:{t.name}:cls:{cls_job}"
    engine = client.app.state.engine  # type: ignore[attr-defined]
    add_model(engine, t, cls_job, ids["classifier_id"], task="sequence_classification")
    r = client.post("/v1/deployments", json={"model": model_id}, headers=t.headers)
    if r.status_code == 200:
        ids["deployment_id"] = r.json()["id"]
    # A public address passes the SSRF check; deployment.ready alone is never sent here
    # (no Serve), so nothing is ever sent to it.
    hook = {"url": "https://8.8.8.8/hook", "event_types": ["deployment.ready"]}
    r = client.post("/v1/webhooks", json=hook, headers=t.headers)
    assert r.status_code == 200, r.text
    ids["webhook_id"] = r.json()["id"]
    name = "SECRET_" + t.name.upper().replace("-", "_")
    r = client.put(f"/v1/secrets/{name}", json={"value": "v"}, headers=t.headers)
    assert r.status_code == 200, r.text
    ids["secret_name"] = name
    return ids


def _fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value).replace("{" + name + ":path}", value)
    return path


def test_another_tenants_id_is_404_on_every_endpoint_that_takes_one(client: TestClient) -> None:
    a = make_tenant(client, "owner")
    b = make_tenant(client, "intruder")
    a_ids = _owned(client, a)
    _owned(client, b)  # B has objects of its own, so nothing is trivially empty
    checked = []
    for method, path, op in _operations(client):
        if path.startswith("/v1/admin/") or "{" not in path:
            continue
        if method == "PUT" and path == "/v1/secrets/{secret_name}":
            continue  # secret names are each tenant's own: B's PUT sets B's own secret
        url = _fill(path, a_ids)
        assert "{" not in url, f"the matrix has no object for {method} {path}: add it"
        body: dict[str, Any] | None = {} if "requestBody" in op else None
        r = client.request(method, url, json=body, headers=b.headers)
        assert r.status_code == 404, (method, path, r.status_code, r.text[:200])
        assert r.json()["error"]["type"] == "invalid_request_error"
        # Nothing of A's beyond what B itself sent (messages may echo the id given).
        echoed = r.text
        for value in sorted(a_ids.values(), key=len, reverse=True):
            echoed = echoed.replace(value, "")
        assert a.id not in echoed and a.name not in echoed, r.text
        checked.append(f"{method} {path}")
    assert len(checked) >= 12, checked
    # A's objects are untouched by B's DELETEs, PATCHes and cancels.
    assert client.get(f"/v1/files/{a_ids['file_id']}", headers=a.headers).status_code == 200
    job = client.get(f"/v1/fine_tuning/jobs/{a_ids['job_id']}", headers=a.headers).json()
    assert job["status"] == "queued"
    assert client.get(f"/v1/models/{a_ids['model_id']}", headers=a.headers).status_code == 200
    if "deployment_id" in a_ids:
        dep = client.get(f"/v1/deployments/{a_ids['deployment_id']}", headers=a.headers)
        assert dep.status_code == 200


def test_another_tenants_ids_in_a_body_answer_as_if_they_did_not_exist(
    client: TestClient,
) -> None:
    a = make_tenant(client, "owner")
    b = make_tenant(client, "intruder")
    a_ids = _owned(client, a)
    missing_model = a_ids["model_id"].replace(a_ids["job_id"], "ftjob-000000000000000000000000")
    missing_cls = a_ids["classifier_id"].rsplit(":", 1)[0] + ":ftjob-000000000000000000000000"
    bodies: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "/v1/fine_tuning/jobs": (
            {"model": "tiny-gpt2", "training_file": a_ids["file_id"]},
            {"model": "tiny-gpt2", "training_file": "file-000000000000000000000000"},
        ),
        "/v1/deployments": ({"model": a_ids["model_id"]}, {"model": missing_model}),
        "/v1/chat/completions": (
            {"model": a_ids["model_id"], "messages": [{"role": "user", "content": "hi"}]},
            {"model": missing_model, "messages": [{"role": "user", "content": "hi"}]},
        ),
        "/v1/completions": (
            {"model": a_ids["model_id"], "prompt": "hi"},
            {"model": missing_model, "prompt": "hi"},
        ),
        "/v1/classifications": (
            {"model": a_ids["classifier_id"], "input": "hi"},
            {"model": missing_cls, "input": "hi"},
        ),
    }
    # A's model through the other task's endpoint: still "does not exist", not "wrong task".
    crossed = {
        "/v1/chat/completions": (
            {"model": a_ids["classifier_id"], "messages": [{"role": "user", "content": "hi"}]},
            {"model": missing_cls, "messages": [{"role": "user", "content": "hi"}]},
        ),
        "/v1/classifications": (
            {"model": a_ids["model_id"], "input": "hi"},
            {"model": missing_model, "input": "hi"},
        ),
    }
    present = {
        path
        for method, path, _ in _operations(client)
        if method == "POST" and "{" not in path and not path.startswith("/v1/admin/")
    }
    # Every body that can name an object is in the matrix (uploads and webhook endpoints
    # name none).
    assert present - {"/v1/files", "/v1/webhooks"} == set(bodies), present ^ set(bodies)
    for path, (theirs, nobodys) in [*bodies.items(), *crossed.items()]:
        r = client.post(path, json=theirs, headers=b.headers)
        same = client.post(path, json=nobodys, headers=b.headers)
        assert r.status_code == same.status_code and 400 <= r.status_code < 500, (path, r.text)
        assert r.json()["error"]["code"] == same.json()["error"]["code"], (path, r.text)
        assert a.id not in r.text


def test_lists_never_hold_another_tenants_objects(client: TestClient) -> None:
    a = make_tenant(client, "owner")
    b = make_tenant(client, "intruder")
    a_ids = _owned(client, a)
    b_ids = _owned(client, b)
    lists = [
        path
        for method, path, _ in _operations(client)
        if method == "GET" and "{" not in path and not path.startswith("/v1/admin/")
    ]
    assert {"/v1/files", "/v1/fine_tuning/jobs", "/v1/models"} <= set(lists)
    for path in lists:
        r = client.get(path, headers=b.headers)
        assert r.status_code == 200, (path, r.text)
        for value in a_ids.values():
            assert value not in r.text, (path, value)
    # B's own job's events and checkpoints hold nothing of A's either.
    for sub in ("events", "checkpoints", "trials"):
        r = client.get(f"/v1/fine_tuning/jobs/{b_ids['job_id']}/{sub}", headers=b.headers)
        assert r.status_code == 200
        assert all(v not in r.text for v in a_ids.values()), sub


def test_keys_missing_wrong_revoked_or_of_the_wrong_role_are_refused_everywhere(
    client: TestClient,
) -> None:
    a = make_tenant(client, "owner")
    a_ids = _owned(client, a)
    # A second key, revoked: refused at once, everywhere.
    created = client.post(f"/v1/admin/tenants/{a.id}/api_keys", json={}, headers=ADMIN).json()
    r = client.delete(f"/v1/admin/tenants/{a.id}/api_keys/{created['id']}", headers=ADMIN)
    assert r.status_code == 200
    revoked = {"Authorization": f"Bearer {created['key']}"}
    ids = {**a_ids, "key_id": created["id"]}
    checked = 0
    for method, path, op in _operations(client):
        url = _fill(path, ids)
        body: dict[str, Any] | None = {} if "requestBody" in op else None
        for name, headers in (("none", {}), ("wrong", NOT_A_KEY), ("revoked", revoked)):
            r = client.request(method, url, json=body, headers=headers)
            assert r.status_code == 401, (name, method, path, r.text[:200])
            assert r.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
            checked += 1
        wrong_role = a.headers if path.startswith("/v1/admin/") else ADMIN
        r = client.request(method, url, json=body, headers=wrong_role)
        assert r.status_code == 403, (method, path, r.text[:200])
        assert r.json()["error"]["code"] == "permission_denied"
        checked += 1
    assert checked >= 4 * 25
    # The tenant's live key still works after all that.
    assert client.get(f"/v1/files/{a_ids['file_id']}", headers=a.headers).status_code == 200

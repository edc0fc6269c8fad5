from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from service.models import ApiKey
from tests.factories import ADMIN, make_tenant


def test_tenant_gets_a_working_key_shown_once(client: TestClient, app: FastAPI) -> None:
    r = client.post(
        "/v1/admin/tenants",
        json={"name": "acme", "weight": 2, "quotas": {"max_queued_jobs": 5}},
        headers=ADMIN,
    )
    assert r.status_code == 200
    body = r.json()
    assert body["tenant"]["name"] == "acme"
    assert body["tenant"]["weight"] == 2
    assert body["tenant"]["quotas"]["max_queued_jobs"] == 5
    key = body["api_key"]
    assert len(key) > 40
    assert client.get("/v1/files", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    # The key is not stored, only its hash; listing keys never shows it again.
    with Session(app.state.engine) as s:
        stored = s.exec(select(ApiKey)).all()
    assert stored and all(key not in (k.key_hash, k.prefix) for k in stored)
    listed = client.get(f"/v1/admin/tenants/{body['tenant']['id']}/api_keys", headers=ADMIN)
    assert key not in listed.text


def test_duplicate_and_invalid_tenant_names_are_refused(client: TestClient) -> None:
    make_tenant(client, "dup")
    r = client.post("/v1/admin/tenants", json={"name": "dup"}, headers=ADMIN)
    assert r.status_code == 409
    assert r.json()["error"]["param"] == "name"
    r = client.post("/v1/admin/tenants", json={"name": "has:colon"}, headers=ADMIN)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "name"
    r = client.post("/v1/admin/tenants", json={"name": "ok", "weight": -1}, headers=ADMIN)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "weight"


def test_more_keys_and_revocation_take_effect_at_once(client: TestClient) -> None:
    t = make_tenant(client)
    r = client.post(f"/v1/admin/tenants/{t.id}/api_keys", json={"name": "ci"}, headers=ADMIN)
    assert r.status_code == 200
    second = r.json()
    second_headers = {"Authorization": f"Bearer {second['key']}"}
    assert client.get("/v1/files", headers=second_headers).status_code == 200

    keys = client.get(f"/v1/admin/tenants/{t.id}/api_keys", headers=ADMIN).json()["data"]
    assert {k["name"] for k in keys} == {"default", "ci"}

    r = client.delete(f"/v1/admin/tenants/{t.id}/api_keys/{second['id']}", headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    refused = client.get("/v1/files", headers=second_headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    # The tenant's other key is untouched.
    assert client.get("/v1/files", headers=t.headers).status_code == 200

    r = client.delete(f"/v1/admin/tenants/{t.id}/api_keys/key-nope", headers=ADMIN)
    assert r.status_code == 404


def test_key_without_body_and_unknown_tenant(client: TestClient) -> None:
    t = make_tenant(client)
    assert client.post(f"/v1/admin/tenants/{t.id}/api_keys", headers=ADMIN).status_code == 200
    r = client.post("/v1/admin/tenants/tenant-nope/api_keys", headers=ADMIN)
    assert r.status_code == 404


def test_roles_are_enforced(client: TestClient) -> None:
    t = make_tenant(client)
    # Tenant keys cannot reach admin endpoints.
    for method, path in [
        ("GET", "/v1/admin/tenants"),
        ("POST", "/v1/admin/tenants"),
        ("GET", f"/v1/admin/tenants/{t.id}"),
        ("POST", f"/v1/admin/tenants/{t.id}/api_keys"),
    ]:
        r = client.request(method, path, headers=t.headers, json={"name": "x"})
        assert r.status_code == 403, (method, path)
        assert r.json()["error"]["code"] == "permission_denied"
    # No key, a wrong key, a malformed header.
    assert client.get("/v1/files").status_code == 401
    assert client.get("/v1/files", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/files", headers={"Authorization": "Basic abc"}).status_code == 401
    # The admin key is not a tenant.
    assert client.get("/v1/files", headers=ADMIN).status_code == 403


def test_update_weight_and_quotas(client: TestClient) -> None:
    t = make_tenant(client)
    r = client.patch(
        f"/v1/admin/tenants/{t.id}",
        json={"weight": 3.5, "quotas": {"max_running_jobs": 1}},
        headers=ADMIN,
    )
    assert r.status_code == 200
    assert r.json()["weight"] == 3.5
    assert r.json()["quotas"]["max_running_jobs"] == 1
    got = client.get(f"/v1/admin/tenants/{t.id}", headers=ADMIN).json()
    assert got["quotas"]["max_running_jobs"] == 1
    listed = client.get("/v1/admin/tenants", headers=ADMIN).json()["data"]
    assert t.id in {x["id"] for x in listed}

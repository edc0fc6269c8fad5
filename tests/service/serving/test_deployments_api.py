"""The deployments API and the inference front door, on both databases; no Serve needed
(the cluster-backed behaviour is in test_serving.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.factories import (
    ADMIN,
    TenantHandle,
    add_model,
    create_job_ok,
    make_tenant,
    upload_ok,
)
from tests.fixtures.redis_server import RedisServer


def _model(client: TestClient, tenant: TenantHandle, suffix: str) -> str:
    job = create_job_ok(client, tenant, model="tiny-gpt2", training_file=upload_ok(client, tenant))
    model_id = f"ft:tiny-gpt2:{tenant.name}:{suffix}:{job['id']}"
    add_model(client.app.state.engine, tenant, job["id"], model_id)  # type: ignore[attr-defined]
    return model_id


def test_deployment_lifecycle(client: TestClient) -> None:
    a = make_tenant(client, "dep-a")
    model = _model(client, a, "x")
    r = client.post(
        "/v1/deployments",
        json={"model": model, "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4},
        headers=a.headers,
    )
    assert r.status_code == 200, r.text
    dep = r.json()
    assert dep["object"] == "deployment"
    assert (dep["model"], dep["min_replicas"], dep["max_replicas"]) == (model, 1, 3)
    assert dep["target_ongoing_requests"] == 4
    # No Ray here: nothing runs it.
    assert (dep["status"], dep["running_replicas"]) == ("not_deployed", 0)

    again = client.post("/v1/deployments", json={"model": model}, headers=a.headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "deployment_exists"

    r = client.patch(f"/v1/deployments/{dep['id']}", json={"min_replicas": 0}, headers=a.headers)
    assert r.status_code == 200 and r.json()["min_replicas"] == 0
    r = client.patch(f"/v1/deployments/{dep['id']}", json={"max_replicas": 0}, headers=a.headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_replicas"
    r = client.patch(f"/v1/deployments/{dep['id']}", json={"min_replicas": 9}, headers=a.headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_replicas"

    listed = client.get("/v1/deployments", headers=a.headers).json()
    assert [d["id"] for d in listed["data"]] == [dep["id"]] and listed["has_more"] is False
    assert client.get(f"/v1/deployments/{dep['id']}", headers=a.headers).json()["id"] == dep["id"]

    gone = client.delete(f"/v1/deployments/{dep['id']}", headers=a.headers)
    assert gone.json() == {"id": dep["id"], "object": "deployment", "deleted": True}
    assert client.get(f"/v1/deployments/{dep['id']}", headers=a.headers).status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"min_replicas": -1}, "min_replicas"),
        ({"max_replicas": 0}, "max_replicas"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests"),
        ({"target_ongoing_requests": "many"}, "target_ongoing_requests"),
        ({"replicas": 3}, "replicas"),
    ],
)
def test_bad_deployments_are_refused_naming_the_param(
    client: TestClient, body: dict[str, object], param: str
) -> None:
    a = make_tenant(client)
    model = _model(client, a, "bad")
    r = client.post("/v1/deployments", json={"model": model, **body}, headers=a.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_deployments_are_tenant_scoped_and_follow_their_model(client: TestClient) -> None:
    a, b = make_tenant(client, "dep-own"), make_tenant(client, "dep-other")
    model = _model(client, a, "mine")
    # B cannot deploy A's model, nor see or touch A's deployment.
    r = client.post("/v1/deployments", json={"model": model}, headers=b.headers)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    dep = client.post("/v1/deployments", json={"model": model}, headers=a.headers).json()
    for method, body in (("GET", None), ("PATCH", {"min_replicas": 0}), ("DELETE", None)):
        r = client.request(method, f"/v1/deployments/{dep['id']}", json=body, headers=b.headers)
        assert r.status_code == 404, (method, r.text)
    assert client.get("/v1/deployments", headers=b.headers).json()["data"] == []
    r = client.get("/v1/deployments", params={"after": dep["id"]}, headers=b.headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "after"
    # Base models are not deployable; unknown models neither.
    for name in ("tiny-gpt2", "ft:nope"):
        r = client.post("/v1/deployments", json={"model": name}, headers=a.headers)
        assert r.status_code == 404
    # Deleting the model deletes its deployment.
    assert client.delete(f"/v1/models/{model}", headers=a.headers).status_code == 200
    assert client.get(f"/v1/deployments/{dep['id']}", headers=a.headers).status_code == 404


def test_inference_refuses_unknown_foreign_base_and_wrong_task_models(client: TestClient) -> None:
    a, b = make_tenant(client, "inf-a"), make_tenant(client, "inf-b")
    model = _model(client, a, "m")
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    cases = [
        (b, {"model": model, **chat}, "/v1/chat/completions", 404, "model_not_found"),
        (a, {"model": "ft:nope", **chat}, "/v1/chat/completions", 404, "model_not_found"),
        # A base LM answers chat (tests/service/serving/test_serving.py); a base encoder
        # neither generates nor has a head of its own.
        (a, {"model": "tiny-bert", **chat}, "/v1/chat/completions", 400, "model_not_servable"),
        (a, {"model": "tiny-bert", "input": "x"}, "/v1/classifications", 400, "model_not_servable"),
        (a, {"model": model, "input": "x"}, "/v1/classifications", 400, "wrong_model_task"),
        (b, {"model": model, "prompt": "x"}, "/v1/completions", 404, "model_not_found"),
    ]
    for tenant, body, path, status, code in cases:
        r = client.post(path, json=body, headers=tenant.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, r.text)
        assert r.json()["error"]["param"] == "model"
    # Deleted: gone for inference too.
    client.delete(f"/v1/models/{model}", headers=a.headers)
    r = client.post("/v1/chat/completions", json={"model": model, **chat}, headers=a.headers)
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {}}, "logit_bias"),
    ],
)
def test_bad_inference_requests_name_the_param(
    client: TestClient, body: dict[str, object], param: str
) -> None:
    a = make_tenant(client)
    r = client.post("/v1/chat/completions", json={"model": "m", **body}, headers=a.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.fixture
def limited_client(settings: Settings, redis_server: RedisServer) -> Iterator[TestClient]:
    redis.Redis.from_url(redis_server.url).flushall()
    app = create_app(settings.model_copy(update={"redis_url": redis_server.url}), run_loops=False)
    with TestClient(app) as c:
        yield c


def test_inference_rate_limit_answers_429_with_retry_after(limited_client: TestClient) -> None:
    client = limited_client
    slow = make_tenant(client, "slow")
    r = client.patch(
        f"/v1/admin/tenants/{slow.id}",
        json={"quotas": {"inference_requests_per_minute": 3}},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    fast = make_tenant(client, "fast")
    body = {"model": "ft:none", "prompt": "x"}
    # The bucket holds a minute's worth at most (3): the model lookup answers those.
    answers = [client.post("/v1/completions", json=body, headers=slow.headers) for _ in range(4)]
    assert [a.status_code for a in answers] == [404, 404, 404, 429]
    refused = answers[-1]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    # Other tenants have their own buckets.
    assert client.post("/v1/completions", json=body, headers=fast.headers).status_code == 404

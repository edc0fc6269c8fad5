"""The inference endpoints' checks before forwarding, done in one trip to the thread pool
(service/inference/router.py): the key first, then the body, then the rate limit and the
model, on both databases; no Serve needed (forwarding is in serving/test_serving.py).
And the admissions kept for the next requests (service/inference/admission.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from service.config import Settings
from service.deployments.serving import Route
from service.inference.admission import (
    Admission,
    AdmissionCache,
    Target,
    admission_generation,
    invalidate_admissions,
)
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

BAD_BODY = {"model": "ft:none", "prompt": "x", "temperature": 9}
GOOD_BODY = {"model": "ft:none", "prompt": "x"}
CHAT = [{"role": "user", "content": "x"}]


@pytest.fixture
def limited_client(settings: Settings, redis_server: RedisServer) -> Iterator[TestClient]:
    redis.Redis.from_url(redis_server.url).flushall()
    app = create_app(settings.model_copy(update={"redis_url": redis_server.url}), run_loops=False)
    with TestClient(app) as c:
        yield c


def test_the_key_is_checked_before_the_body_and_the_body_before_the_model(
    limited_client: TestClient,
) -> None:
    client = limited_client
    a = make_tenant(client)
    wrong = {"Authorization": "Bearer tp-never-issued"}
    r = client.post("/v1/completions", json=BAD_BODY, headers=wrong)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key"), r.text
    r = client.post("/v1/completions", json=BAD_BODY)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "missing_api_key"), r.text
    r = client.post("/v1/completions", json=GOOD_BODY, headers=ADMIN)
    assert r.status_code == 403, r.text
    r = client.post("/v1/completions", json=BAD_BODY, headers=a.headers)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "temperature"), r.text
    r = client.post("/v1/completions", json=GOOD_BODY, headers=a.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found"), r.text
    # A body sent as another content type is FastAPI's to refuse, after the key.
    r = client.post("/v1/completions", content=b"{}", headers={**wrong, "content-type": "text/x"})
    assert r.status_code == 401, r.text


def test_refused_bodies_take_no_token_and_each_model_answers_by_its_own_rules(
    limited_client: TestClient,
) -> None:
    client = limited_client
    a = make_tenant(client, "front-a")
    r = client.patch(
        f"/v1/admin/tenants/{a.id}",
        json={"quotas": {"inference_requests_per_minute": 3}},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    job = create_job_ok(client, a, model="tiny-gpt2", training_file=upload_ok(client, a))
    engine = client.app.state.engine  # type: ignore[attr-defined]
    classifier = f"ft:tiny-bert:{a.name}:cls:{job['id']}"
    add_model(engine, a, job["id"], classifier, task="sequence_classification")
    for _ in range(3):
        r = client.post("/v1/completions", json=BAD_BODY, headers=a.headers)
        assert r.status_code == 400, r.text
    # The 3 tokens are all still there: a classifier read with the key is refused for
    # completions, a base model for classification, an unknown model is a 404.
    calls = [
        ("/v1/completions", {"model": classifier, "prompt": "x"}),
        ("/v1/classifications", {"model": "tiny-gpt2", "input": "x"}),
        ("/v1/chat/completions", {"model": "ft:none", "messages": CHAT}),
    ]
    answers = [client.post(path, json=body, headers=a.headers) for path, body in calls]
    assert [(r.status_code, r.json()["error"]["code"]) for r in answers] == [
        (400, "wrong_model_task"),
        (400, "model_not_servable"),
        (404, "model_not_found"),
    ]
    r = client.post("/v1/completions", json=GOOD_BODY, headers=a.headers)
    assert r.status_code == 429, r.text


# ------------------------------------------------------------------ kept admissions


def _model(client: TestClient, tenant: TenantHandle) -> str:
    job = create_job_ok(client, tenant, model="tiny-gpt2", training_file=upload_ok(client, tenant))
    model_id = f"ft:tiny-gpt2:{tenant.name}:kept:{job['id']}"
    add_model(client.app.state.engine, tenant, job["id"], model_id)  # type: ignore[attr-defined]
    return model_id


def _statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    return seen


def test_a_kept_admission_reads_no_database_and_still_takes_the_rate_limit(
    limited_client: TestClient,
) -> None:
    client = limited_client
    a = make_tenant(client, "kept-a")
    client.patch(
        f"/v1/admin/tenants/{a.id}",
        json={"quotas": {"inference_requests_per_minute": 3}},
        headers=ADMIN,
    ).raise_for_status()
    body = {"model": _model(client, a), "prompt": "x"}
    statements = _statements(client.app.state.engine)  # type: ignore[attr-defined]
    # Resolved and admitted (no Serve here: the forward answers 503 serving_unavailable).
    r = client.post("/v1/completions", json=body, headers=a.headers)
    assert r.status_code == 503, r.text
    assert statements, "the first request reads the key and the model"
    statements.clear()
    r = client.post("/v1/completions", json=body, headers=a.headers)
    assert r.status_code == 503, r.text
    assert statements == []
    # The third token is the last; the kept admission takes them from Redis too.
    assert client.post("/v1/completions", json=body, headers=a.headers).status_code == 503
    r = client.post("/v1/completions", json=body, headers=a.headers)
    assert r.status_code == 429, r.text
    assert statements == []


def test_a_revoked_key_a_new_quota_and_a_deleted_model_apply_to_kept_admissions_at_once(
    limited_client: TestClient,
) -> None:
    client = limited_client
    a = make_tenant(client, "kept-b")
    model_id = _model(client, a)
    body = {"model": model_id, "prompt": "x"}
    spare = client.post(f"/v1/admin/tenants/{a.id}/api_keys", json={}, headers=ADMIN).json()
    spare_headers = {"Authorization": f"Bearer {spare['key']}"}
    for headers in (a.headers, spare_headers):
        assert client.post("/v1/completions", json=body, headers=headers).status_code == 503

    r = client.delete(f"/v1/admin/tenants/{a.id}/api_keys/{spare['id']}", headers=ADMIN)
    assert r.status_code == 200, r.text
    r = client.post("/v1/completions", json=body, headers=spare_headers)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key"), r.text

    r = client.patch(
        f"/v1/admin/tenants/{a.id}",
        json={"quotas": {"inference_requests_per_minute": 1}},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    assert client.post("/v1/completions", json=body, headers=a.headers).status_code == 503
    r = client.post("/v1/completions", json=body, headers=a.headers)
    assert r.status_code == 429, r.text

    client.patch(
        f"/v1/admin/tenants/{a.id}",
        json={"quotas": {"inference_requests_per_minute": 6000}},
        headers=ADMIN,
    ).raise_for_status()
    assert client.delete(f"/v1/models/{model_id}", headers=a.headers).status_code == 200
    r = client.post("/v1/completions", json=body, headers=a.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found"), r.text


def test_the_admission_cache_forgets_on_expiry_and_on_a_change_during_the_read() -> None:
    clock = [0.0]
    cache = AdmissionCache(ttl_s=1.0, timer=lambda: clock[0])
    target = Target(
        Route(app="app", multiplexed_id="m", task="causal_lm", base_model="tiny-gpt2"), "m"
    )

    def admission() -> Admission:
        return Admission("t", 60, 10, target, admission_generation())

    cache.put("k", "m", "causal_lm", admission())
    assert cache.get("k", "m", "causal_lm") is not None
    assert cache.get("k", "m", "sequence_classification") is None
    clock[0] = 1.5
    assert cache.get("k", "m", "causal_lm") is None
    # Read before a key was revoked, stored after: never kept.
    read_before = admission()
    invalidate_admissions()
    cache.put("k", "m", "causal_lm", read_before)
    assert cache.get("k", "m", "causal_lm") is None
    cache.put("k", "m", "causal_lm", admission())
    invalidate_admissions()
    assert cache.get("k", "m", "causal_lm") is None
    assert len(AdmissionCache(ttl_s=0)) == 0

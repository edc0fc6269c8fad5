"""The inference endpoints' checks before forwarding, done in one trip to the thread pool
(service/inference/router.py): the key first, then the body, then the rate limit and the
model, on both databases; no Serve needed (forwarding is in serving/test_serving.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.factories import ADMIN, add_model, create_job_ok, make_tenant, upload_ok
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

"""A deployment's generation engine: asked for, shown, run by its model's application, and
refused up front where it cannot serve the model (on both databases; no Serve needed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.factories import TenantHandle, add_model, create_job_ok, make_tenant, upload_ok


def _model(client: TestClient, tenant: TenantHandle, suffix: str, **job: Any) -> str:
    fields = {"model": "tiny-gpt2", "training_file": upload_ok(client, tenant), **job}
    made = create_job_ok(client, tenant, **fields)
    model_id = f"ft:tiny-gpt2:{tenant.name}:{suffix}:{made['id']}"
    add_model(client.app.state.engine, tenant, made["id"], model_id)  # type: ignore[attr-defined]
    return model_id


def _app_engine(client: TestClient) -> str:
    """The engine in the Serve config of tiny-gpt2's adapters' application."""
    config = client.app.state.serving.desired()  # type: ignore[attr-defined]
    app = next(a for a in config["applications"] if a["name"].startswith("lm-tiny-tiny-gpt2"))
    return str(app["args"]["engine"])


def test_a_deployment_asks_for_an_engine_and_its_application_runs_it(client: TestClient) -> None:
    a, b = make_tenant(client, "eng-a"), make_tenant(client, "eng-b")
    mine, theirs = _model(client, a, "m"), _model(client, b, "t")
    assert _app_engine(client) == "auto"  # the cluster's choice (TUNEPLANE_SERVE_ENGINE)

    r = client.post("/v1/deployments", json={"model": mine, "engine": "vllm"}, headers=a.headers)
    assert r.status_code == 200, r.text
    dep = r.json()
    assert dep["engine"] == "vllm"
    assert _app_engine(client) == "vllm"
    # Another deployment of the same base model defers ("auto"): vLLM still.
    other = client.post("/v1/deployments", json={"model": theirs}, headers=b.headers).json()
    assert other["engine"] == "auto" and _app_engine(client) == "vllm"
    # Two engines named for one application: transformers, which serves every model.
    r = client.patch(f"/v1/deployments/{other['id']}", json={"engine": "hf"}, headers=b.headers)
    assert r.status_code == 200 and r.json()["engine"] == "hf"
    assert _app_engine(client) == "hf"
    client.delete(f"/v1/deployments/{other['id']}", headers=b.headers)
    assert _app_engine(client) == "vllm"
    assert client.get(f"/v1/deployments/{dep['id']}", headers=a.headers).json()["engine"] == "vllm"

    r = client.post("/v1/deployments", json={"model": theirs, "engine": "gpu"}, headers=b.headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "engine"


@pytest.fixture
def rank_limited(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"serve_max_lora_rank": 8}), run_loops=False)
    with TestClient(app) as c:
        yield c


def test_vllm_is_refused_up_front_for_what_it_cannot_serve(rank_limited: TestClient) -> None:
    client = rank_limited
    a = make_tenant(client, "eng-limits")
    small = _model(client, a, "r8", adapter={"type": "lora", "r": 8})
    large = _model(client, a, "r16", adapter={"type": "lora", "r": 16})
    ok = client.post("/v1/deployments", json={"model": small, "engine": "vllm"}, headers=a.headers)
    assert ok.status_code == 200, ok.text

    r = client.post("/v1/deployments", json={"model": large, "engine": "vllm"}, headers=a.headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("engine", "adapter_rank_too_large")
    assert "rank 16" in error["message"] and "rank 8" in error["message"]
    # The transformers engine has no such limit; switching to vLLM later is checked too.
    dep = client.post("/v1/deployments", json={"model": large}, headers=a.headers).json()
    assert dep["engine"] == "auto"
    r = client.patch(f"/v1/deployments/{dep['id']}", json={"engine": "vllm"}, headers=a.headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "adapter_rank_too_large"
    assert client.get(f"/v1/deployments/{dep['id']}", headers=a.headers).json()["engine"] == "auto"

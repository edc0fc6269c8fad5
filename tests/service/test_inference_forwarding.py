"""Forwarding to Serve's proxy and the answers the control plane makes of what comes back
(service/inference/service.py), against a stand-in for Serve's HTTP proxy on loopback:
an answer relayed whole or streamed, a model error passed on, and Serve's own failures,
a refused connection and a model that never answers turned into 503s with their codes.
Serve itself answers in tests/service/serving/test_serving.py (Ray)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from starlette.types import Receive, Scope, Send

from service.config import Settings
from service.deployments.serving import route_of
from service.main import create_app
from service.models import FineTunedModel, Job
from service.ray_backend import ServeAppStatus
from service.stack import free_port
from tests.factories import TenantHandle, add_model, create_job_ok, make_tenant, upload_ok
from tests.fixtures.app import ADMIN_KEY

USAGE = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve's proxy and a replica: what it does is the prompt's word."""
    if scope["type"] != "http":
        return
    raw, more = b"", True
    while more:
        message = await receive()
        raw += message.get("body", b"")
        more = message.get("more_body", False)
    prompt = json.loads(raw)["prompt"]
    headers = dict(scope["headers"])
    multiplexed = headers.get(b"serve_multiplexed_model_id", b"").decode()
    if prompt == "stream":
        await send(_start(200, b"text/event-stream"))
        for word in ("red", "green"):
            chunk = {"choices": [{"index": 0, "text": word}]}
            await send(_body(f"data: {json.dumps(chunk)}\n\n".encode(), more=True))
            await asyncio.sleep(0.05)
        await send(_body(f": {json.dumps({'usage': USAGE})}\n\ndata: [DONE]\n\n".encode()))
        return
    if prompt == "slow":
        await asyncio.sleep(5)
    if prompt == "boom":
        await send(_start(500, b"text/plain"))
        await send(_body(b"Internal Server Error"))
        return
    if prompt == "bad":
        error = {"error": {"message": "max_tokens too large", "code": "bad", "param": None}}
        await send(_start(400, b"application/json"))
        await send(_body(json.dumps(error).encode()))
        return
    answer = {"object": "text_completion", "choices": [{"text": multiplexed}], "usage": USAGE}
    await send(_start(200, b"application/json"))
    await send(_body(json.dumps(answer).encode()))


def _start(status: int, content_type: bytes) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type)],
    }


def _body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


@pytest.fixture(scope="module")
def serve_proxy() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(upstream, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the stand-in for Serve did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


class RunningApps:
    """A Serve backend whose every application is running (its proxy is the stand-in)."""

    def __init__(self) -> None:
        self.apps: list[str] = []

    def deploy_serve(self, config: dict[str, Any]) -> None:
        self.apps += [a["name"] for a in config.get("applications", [])]

    def serve_status(self) -> dict[str, ServeAppStatus]:
        return {app: ServeAppStatus("RUNNING", "", 1, 1) for app in self.apps}


def _client(tmp_path: Path, serve_url: str) -> tuple[TestClient, RunningApps]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'tuneplane.db'}",
        admin_key=ADMIN_KEY,
        serve_url=serve_url,
        serve_request_timeout_s=0.5,
    )
    backend = RunningApps()
    return TestClient(create_app(settings, serve_backend=backend)), backend


def _model(client: TestClient, backend: RunningApps) -> tuple[TenantHandle, str, str]:
    """A tenant's fine-tuned model, its application running: (tenant, model, multiplexed)."""
    tenant = make_tenant(client, "fwd")
    job = create_job_ok(client, tenant, model="tiny-gpt2", training_file=upload_ok(client, tenant))
    model_id = f"ft:tiny-gpt2:fwd:m:{job['id']}"
    engine = client.app.state.engine  # type: ignore[attr-defined]
    add_model(engine, tenant, job["id"], model_id)
    with Session(engine) as s:
        model = s.exec(select(FineTunedModel).where(FineTunedModel.id == model_id)).one()
        route = route_of(model, s.get(Job, job["id"]))[0]  # type: ignore[arg-type]
    backend.apps.append(route.app)
    return tenant, model_id, route.multiplexed_id


def test_answers_are_relayed_whole_and_streamed_and_model_errors_passed_on(
    tmp_path: Path, serve_proxy: str
) -> None:
    client, backend = _client(tmp_path, serve_proxy)
    with client:
        tenant, model_id, multiplexed = _model(client, backend)

        def call(prompt: str, **extra: Any) -> Any:
            body = {"model": model_id, "prompt": prompt, **extra}
            return client.post("/v1/completions", json=body, headers=tenant.headers)

        r = call("ok")
        assert r.status_code == 200, r.text
        # Serve was told which adapter: the model's multiplexed id.
        assert r.json()["choices"][0]["text"] == multiplexed
        r = call("stream", stream=True)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        assert '"text": "red"' in r.text and r.text.endswith("data: [DONE]\n\n")
        r = call("bad")
        assert (r.status_code, r.json()["error"]["code"]) == (400, "bad"), r.text
        r = call("boom")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "model_unavailable"), r.text
        assert r.headers["retry-after"] == "5"
        # Longer than serve_request_timeout_s between two reads.
        r = call("slow")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "model_timeout"), r.text


def test_an_unreachable_serve_is_a_503_to_retry(tmp_path: Path) -> None:
    client, backend = _client(tmp_path, f"http://127.0.0.1:{free_port()}")
    with client:
        tenant, model_id, _ = _model(client, backend)
        r = client.post(
            "/v1/completions", json={"model": model_id, "prompt": "ok"}, headers=tenant.headers
        )
        assert (r.status_code, r.json()["error"]["code"]) == (503, "model_unavailable"), r.text
        assert r.headers["retry-after"] == "5"
        assert "cannot be reached" in r.json()["error"]["message"]

"""`deployment.ready`: once per deployment, when its Serve application is first found
running; Serve's status is given as the serving loop reads it (`ServingManager.status`)."""

from __future__ import annotations

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from service.config import Settings
from service.deployments.serving import route_of
from service.models import FineTunedModel, Job, WebhookDelivery
from service.ray_backend import ServeAppStatus
from service.webhooks.ready import announce_ready
from tests.factories import TenantHandle, add_model, create_job_ok, make_tenant
from tests.service.webhook_receiver import Receiver


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"webhook_allowed_hosts": ["127.0.0.1"], "webhook_poll_interval_s": 0.05}
    )


def _app_of(model: FineTunedModel, job: Job) -> str:
    return route_of(model, job)[0].app


def _deployed(app: FastAPI, client: TestClient, t: TenantHandle, model_id: str) -> str:
    job = create_job_ok(client, t)
    add_model(app.state.engine, t, job["id"], model_id)
    r = client.post("/v1/deployments", json={"model": model_id}, headers=t.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _serve(app_name: str, status: str) -> dict[str, ServeAppStatus]:
    return {app_name: ServeAppStatus(status, "", 1 if status == "RUNNING" else 0, 1)}


def _rows(app: FastAPI) -> list[WebhookDelivery]:
    with Session(app.state.engine) as session:
        return list(session.exec(select(WebhookDelivery)))


def test_deployment_ready_is_told_once(
    app: FastAPI, client: TestClient, receiver: Receiver
) -> None:
    t = make_tenant(client)
    hook = client.post(
        "/v1/webhooks",
        json={"url": receiver.url, "event_types": ["deployment.ready"]},
        headers=t.headers,
    ).json()
    deployment_id = _deployed(app, client, t, f"ft:tiny-gpt2:{t.name}:ready")
    with Session(app.state.engine) as session:
        model = session.exec(select(FineTunedModel)).one()
        app_name = _app_of(model, session.get(Job, model.job_id))  # type: ignore[arg-type]
    engine = app.state.engine

    assert announce_ready(engine, _app_of, lambda: _serve(app_name, "DEPLOYING")) == 0
    assert announce_ready(engine, _app_of, lambda: {}) == 0
    assert _rows(app) == []
    assert announce_ready(engine, _app_of, lambda: _serve(app_name, "RUNNING")) == 1
    # Every replica's serving loop finds it running: it is told once.
    assert announce_ready(engine, _app_of, lambda: _serve(app_name, "RUNNING")) == 0
    assert len(_rows(app)) == 1

    [got] = receiver.wait_delivered(1)
    client_ = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9")
    event = client_.webhooks.unwrap(got.body, got.headers, secret=hook["signing_secret"])
    # Not one of OpenAI's types: unwrap verifies it and hands back the fields as sent.
    assert event.type == "deployment.ready" and event.data.id == deployment_id


def test_an_endpoint_added_later_is_not_told_of_earlier_deployments(
    app: FastAPI, client: TestClient
) -> None:
    t = make_tenant(client)
    _deployed(app, client, t, f"ft:tiny-gpt2:{t.name}:early")
    r = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/", "event_types": ["deployment.ready"]},
        headers=t.headers,
    )
    assert r.status_code == 200, r.text
    with Session(app.state.engine) as session:
        model = session.exec(select(FineTunedModel)).one()
        app_name = _app_of(model, session.get(Job, model.job_id))  # type: ignore[arg-type]
    running = _serve(app_name, "RUNNING")
    assert announce_ready(app.state.engine, _app_of, lambda: running) == 0
    assert _rows(app) == []

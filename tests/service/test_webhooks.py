"""Webhooks: endpoints through the API, the outbox written by `transition()`, delivery to
a real local receiver, verified by the official `openai` client."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from service.config import Settings
from service.jobs.state import transition
from service.main import create_app
from service.models import WebhookDelivery
from service.models.status import JobStatus
from service.webhooks.addresses import AddressRefused, check
from service.webhooks.sender import WebhookSender, backoff
from tests.factories import TenantHandle, create_job_ok, make_tenant
from tests.fixtures.app import ADMIN_KEY
from tests.service.webhook_receiver import Received, Receiver

S = JobStatus
ALL = [
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.paused",
    "deployment.ready",
]
UNWRAP = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_allowed_hosts": ["127.0.0.1"],
            "webhook_poll_interval_s": 0.05,
            "webhook_backoff_base_s": 0.05,
            "webhook_backoff_max_s": 0.2,
            "webhook_timeout_s": 5.0,
        }
    )


def _endpoint(
    client: TestClient, t: TenantHandle, url: str, types: list[str] | None = None
) -> dict[str, Any]:
    r = client.post(
        "/v1/webhooks", json={"url": url, "event_types": types or ALL}, headers=t.headers
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _unwrap(received: Received, secret: str) -> Any:
    return UNWRAP.webhooks.unwrap(received.body, received.headers, secret=secret)


def _move(app: FastAPI, job_id: str, *path: JobStatus) -> None:
    """Each change of `path` through `transition()`, one transaction each."""
    for to in path:
        with Session(app.state.engine) as session:
            assert transition(session, job_id, to), f"{job_id} -> {to}"
            session.commit()


def _deliveries(client: TestClient, t: TenantHandle, endpoint_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=t.headers)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def _wait(check: Any, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def test_endpoints_create_list_get_delete(client: TestClient, receiver: Receiver) -> None:
    t = make_tenant(client)
    other = make_tenant(client)
    created = _endpoint(client, t, receiver.url, ["fine_tuning.job.succeeded"] * 2)
    assert created["object"] == "webhook_endpoint"
    assert created["event_types"] == ["fine_tuning.job.succeeded"]
    assert created["signing_secret"].startswith("whsec_")
    assert len(base64.b64decode(created["signing_secret"][6:])) >= 24
    second = _endpoint(client, t, receiver.url)

    listed = client.get("/v1/webhooks?limit=1", headers=t.headers).json()
    assert [e["id"] for e in listed["data"]] == [second["id"]] and listed["has_more"]
    rest = client.get(f"/v1/webhooks?after={second['id']}", headers=t.headers).json()
    assert [e["id"] for e in rest["data"]] == [created["id"]] and not rest["has_more"]
    shown = client.get(f"/v1/webhooks/{created['id']}", headers=t.headers).json()
    # The secret is shown once, in the create's answer.
    assert "signing_secret" not in shown and "signing_secret" not in listed["data"][0]
    assert shown["signing_secret_hint"] == created["signing_secret_hint"]
    assert created["signing_secret"].endswith(shown["signing_secret_hint"][-4:])
    assert shown["url"] == receiver.url
    assert client.get(f"/v1/webhooks/{created['id']}", headers=other.headers).status_code == 404
    assert client.get("/v1/webhooks", headers=other.headers).json()["data"] == []

    r = client.delete(f"/v1/webhooks/{created['id']}", headers=t.headers)
    assert r.json() == {"id": created["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    r = client.get(f"/v1/webhooks/{created['id']}", headers=t.headers)
    assert r.status_code == 404 and r.json()["error"]["param"] == "webhook_id"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"url": "http://127.0.0.1:1/", "event_types": ["fine_tuning.job.started"]},
            "event_types[0]",
        ),
        ({"url": "http://127.0.0.1:1/", "event_types": []}, "event_types"),
        ({"url": "ftp://127.0.0.1/", "event_types": ALL}, "url"),
        ({"url": "http://user:pw@127.0.0.1/", "event_types": ALL}, "url"),
        ({"url": "not a url", "event_types": ALL}, "url"),
    ],
)
def test_invalid_endpoints_are_refused_naming_the_field(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    t = make_tenant(client)
    r = client.post("/v1/webhooks", json=body, headers=t.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_job_events_signed_and_verified_by_the_openai_client(
    app: FastAPI, client: TestClient, receiver: Receiver
) -> None:
    t = make_tenant(client)
    everything = _endpoint(client, t, receiver.url)
    only_success = _endpoint(client, t, receiver.url + "?only=success", [ALL[0]])
    paused_then_succeeded = create_job_ok(client, t)["id"]
    failed = create_job_ok(client, t)["id"]
    cancelled = create_job_ok(client, t)["id"]
    _move(app, paused_then_succeeded, S.RUNNING, S.PAUSING, S.PAUSED)
    _move(app, paused_then_succeeded, S.QUEUED, S.RUNNING, S.SUCCEEDED)
    _move(app, failed, S.RUNNING, S.FAILED)
    r = client.post(f"/v1/fine_tuning/jobs/{cancelled}/cancel", headers=t.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text

    delivered = receiver.wait_delivered(5)
    time.sleep(0.3)  # anything more (there must be nothing) would have arrived by now
    assert len(receiver.requests()) == 5
    seen: list[tuple[str, str, str]] = []
    for got in delivered:
        which = "success" if got.path.endswith("only=success") else "all"
        secret = (only_success if which == "success" else everything)["signing_secret"]
        event = _unwrap(got, secret)
        payload = json.loads(got.body)
        assert event.id == payload["id"] == got.webhook_id and event.object == "event"
        assert isinstance(event.created_at, int)
        seen.append((which, event.type, event.data.id))
    assert sorted(seen) == sorted(
        [
            ("all", "fine_tuning.job.paused", paused_then_succeeded),
            ("all", "fine_tuning.job.succeeded", paused_then_succeeded),
            ("all", "fine_tuning.job.failed", failed),
            ("all", "fine_tuning.job.cancelled", cancelled),
            ("success", "fine_tuning.job.succeeded", paused_then_succeeded),
        ]
    )
    # One event, two endpoints: the same event id, each signed with its own secret.
    ids = [g.webhook_id for g in delivered if b"succeeded" in g.body]
    assert len(ids) == 2 and ids[0] == ids[1]
    [row] = [d for d in _deliveries(client, t, only_success["id"]) if d["event_id"] == ids[0]]
    assert row["status"] == "delivered" and row["attempts"] == 1
    assert row["last_status_code"] == 200 and row["delivered_at"] is not None


def test_a_change_rolled_back_sends_nothing(
    app: FastAPI, client: TestClient, receiver: Receiver
) -> None:
    t = make_tenant(client)
    endpoint = _endpoint(client, t, receiver.url)
    job_id = create_job_ok(client, t)["id"]
    with Session(app.state.engine) as session:
        assert transition(session, job_id, S.CANCELLED)
        session.rollback()
    with Session(app.state.engine) as session:
        assert list(session.exec(select(WebhookDelivery))) == []
    assert _deliveries(client, t, endpoint["id"]) == []
    # The same change committed is told once.
    _move(app, job_id, S.CANCELLED)
    [got] = receiver.wait_delivered(1)
    assert _unwrap(got, endpoint["signing_secret"]).type == "fine_tuning.job.cancelled"


def test_retried_with_the_same_id_until_the_receiver_recovers(
    app: FastAPI, client: TestClient, receiver: Receiver
) -> None:
    receiver.fail_next = 3
    t = make_tenant(client)
    endpoint = _endpoint(client, t, receiver.url)
    job_id = create_job_ok(client, t)["id"]
    _move(app, job_id, S.CANCELLED)
    receiver.wait_delivered(1)
    attempts = receiver.requests()
    assert [a.answered for a in attempts] == [503, 503, 503, 200]
    assert len({a.webhook_id for a in attempts}) == 1
    for a in attempts:  # each attempt is signed afresh, and verifies
        assert _unwrap(a, endpoint["signing_secret"]).data.id == job_id
    [row] = _wait(
        lambda: [d for d in _deliveries(client, t, endpoint["id"]) if d["status"] == "delivered"]
    )
    assert row["attempts"] == 4 and row["last_status_code"] == 200 and row["last_error"] is None


def test_given_up_after_the_last_attempt(
    settings: Settings, client: TestClient, app: FastAPI, receiver: Receiver
) -> None:
    settings.webhook_max_attempts = 2  # the app's own settings object
    receiver.failing = True
    t = make_tenant(client)
    endpoint = _endpoint(client, t, receiver.url)
    _move(app, create_job_ok(client, t)["id"], S.CANCELLED)
    [row] = _wait(
        lambda: [d for d in _deliveries(client, t, endpoint["id"]) if d["status"] == "failed"]
    )
    assert row["attempts"] == 2 and row["last_status_code"] == 503
    assert row["last_error"] == "HTTP 503: receiver down" and row["next_attempt_at"] is None
    time.sleep(0.3)
    assert len(receiver.requests()) == 2


def test_redirects_are_not_followed(app: FastAPI, client: TestClient, receiver: Receiver) -> None:
    elsewhere = Receiver()
    try:
        receiver.redirect_to = elsewhere.url
        t = make_tenant(client)
        endpoint = _endpoint(client, t, receiver.url)
        _move(app, create_job_ok(client, t)["id"], S.CANCELLED)
        [row] = _wait(
            lambda: [d for d in _deliveries(client, t, endpoint["id"]) if d["attempts"] >= 1]
        )
        assert row["last_status_code"] == 302 and row["status"] == "pending"
        assert elsewhere.requests() == []
    finally:
        elsewhere.close()


def test_deleting_an_endpoint_drops_its_pending_deliveries(
    app: FastAPI, client: TestClient, receiver: Receiver
) -> None:
    receiver.failing = True
    t = make_tenant(client)
    endpoint = _endpoint(client, t, receiver.url)
    kept = _endpoint(client, t, receiver.url + "?kept")
    _move(app, create_job_ok(client, t)["id"], S.CANCELLED)
    _wait(lambda: len(receiver.requests()) >= 2)
    assert client.delete(f"/v1/webhooks/{endpoint['id']}", headers=t.headers).status_code == 200
    with Session(app.state.engine) as session:
        rows = list(session.exec(select(WebhookDelivery)))
    assert [r.endpoint_id for r in rows] == [kept["id"]]


# -- SSRF ---------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Any:
    """A port on 127.0.0.1 that records whether anything connected to it."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def _nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",
        "http://[::1]:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://0.0.0.0:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://169.254.1.1/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "https://[fe80::1]/",
        "http://2130706433:{port}/",
    ],
)
def test_private_and_metadata_targets_are_refused_before_any_connection(
    tmp_path: Any, database_url: str, url: str, listener: socket.socket
) -> None:
    strict = Settings(data_dir=tmp_path / "data", database_url=database_url, admin_key=ADMIN_KEY)
    with TestClient(create_app(strict)) as client:
        t = make_tenant(client)
        target = url.format(port=listener.getsockname()[1])
        r = client.post("/v1/webhooks", json={"url": target, "event_types": ALL}, headers=t.headers)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "url" and error["code"] == "invalid_url"
    assert _nobody_connected(listener)


def test_the_address_is_checked_again_before_each_send(
    settings: Settings, receiver: Receiver
) -> None:
    # No sender of the app's own: the one below, with the settings an admin has since
    # changed (127.0.0.1 no longer allowed), is the only one.
    app = create_app(settings, run_loops=False)
    with TestClient(app) as client:
        t = make_tenant(client)
        endpoint = _endpoint(client, t, receiver.url)
        _move(app, create_job_ok(client, t)["id"], S.CANCELLED)
        strict = settings.model_copy(
            update={"webhook_allowed_hosts": [], "webhook_max_attempts": 1}
        )
        sender = WebhookSender(app.state.engine, strict)
        try:
            assert sender.run_once() == 1
        finally:
            sender.pool.shutdown()
            sender.client.close()
        [row] = _deliveries(client, t, endpoint["id"])
    assert row["status"] == "failed" and "127.0.0.1" in row["last_error"]
    assert receiver.requests() == []


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("http://127.0.0.1:8080/h", ["127.0.0.1"], True),
        ("http://127.0.0.1:8080/h", ["127.0.0.0/8"], True),
        ("http://localhost:8080/h", ["localhost"], True),
        ("http://localhost:8080/h", ["10.0.0.0/8"], False),
        ("http://10.2.3.4/h", ["10.0.0.0/8"], True),
        ("http://10.2.3.4/h", ["10.1.0.0/16"], False),
        # Metadata addresses: only when listed themselves, not inside an allowed network.
        ("http://169.254.169.254/", ["169.254.0.0/16"], False),
        ("http://169.254.169.254/", ["169.254.169.254"], True),
        ("http://8.8.8.8/h", [], True),
        ("https://[2001:4860:4860::8888]/h", [], True),
    ],
)
def test_the_allow_list_names_hosts_addresses_and_networks(
    url: str, allowed: list[str], ok: bool
) -> None:
    # Resolution only (IP literals and /etc/hosts): nothing is connected to.
    if ok:
        target = check(url, allowed)
        assert target.server_name in url and target.address in target.url
    else:
        with pytest.raises(AddressRefused):
            check(url, allowed)


def test_a_checked_url_is_pinned_to_the_address_checked() -> None:
    target = check("http://localhost:8080/a/b?c=d#frag", ["localhost"])
    assert target.url in ("http://127.0.0.1:8080/a/b?c=d", "http://[::1]:8080/a/b?c=d")
    assert target.host_header == "localhost:8080" and target.server_name == "localhost"


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    for attempts, ceiling in ((1, 10.0), (2, 20.0), (3, 40.0), (9, 300.0), (40, 300.0)):
        assert ceiling / 2 <= backoff(attempts, 10.0, 300.0) <= ceiling


def test_replicas_claim_each_delivery_once(settings: Settings, receiver: Receiver) -> None:
    # Two replicas' senders on one database (the app's own loop is off): each row is
    # claimed by one of them, so in a run without failures each event arrives once.
    app = create_app(settings, run_loops=False)
    with TestClient(app) as client:
        t = make_tenant(client)
        _endpoint(client, t, receiver.url)
        for _ in range(12):
            _move(app, create_job_ok(client, t)["id"], S.CANCELLED)
        senders = [WebhookSender(app.state.engine, settings) for _ in range(2)]
        sent: list[int] = []

        def drain(sender: WebhookSender) -> None:
            while (n := sender.run_once()) > 0:
                sent.append(n)

        threads = [threading.Thread(target=drain, args=(s,)) for s in senders]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        finally:
            for s in senders:
                s.pool.shutdown()
                s.client.close()
    ids = [r.webhook_id for r in receiver.requests()]
    assert sum(sent) == 12 and len(ids) == 12 and len(set(ids)) == 12

"""The control plane SIGKILLed mid-delivery: after its restart every event is delivered,
under the id it was first sent with, and no event is invented."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from service.config import Settings
from service.stack import free_port
from tests.factories import TenantHandle
from tests.fixtures.app import ADMIN_KEY
from tests.fixtures.stack import ControlPlaneProcess, wait_for
from tests.service.reliability.harness import make_tenant, submit
from tests.service.webhook_receiver import Receiver

# A fault scenario, as test_faults' are: outside `make test`'s budget (make test-long).
pytestmark = pytest.mark.long
JOBS = 3


def _deliveries(http: httpx.Client, t: TenantHandle, endpoint_id: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=t.headers)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def test_restart_mid_delivery_delivers_each_event_and_invents_none(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        admin_key=ADMIN_KEY,
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_poll_interval_s=0.1,
        webhook_backoff_base_s=0.2,
        webhook_backoff_max_s=0.5,
        webhook_connect_timeout_s=1.0,
        webhook_timeout_s=1.0,
        webhook_max_attempts=100,
    )
    # The first replica dies right after a receiver accepted a delivery, before the
    # delivery is recorded.
    crashing = settings.model_copy(update={"fault_crash_at": "webhooks.after_send:delivered"})
    receiver.failing = True
    first = ControlPlaneProcess(crashing, free_port(), tmp_path / "cp1.log")
    try:
        http = httpx.Client(base_url=first.url, timeout=30)
        t = make_tenant(http, "hooks")
        r = http.post(
            "/v1/webhooks",
            json={"url": receiver.url, "event_types": ["fine_tuning.job.cancelled"]},
            headers=t.headers,
        )
        assert r.status_code == 200, r.text
        endpoint = r.json()
        jobs = [submit(http, t) for _ in range(JOBS)]
        for job_id in jobs:
            r = http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=t.headers)
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        # Every event has been tried (and refused) at least once.
        wait_for(
            lambda: len({q.webhook_id for q in receiver.requests()}) == JOBS, 30, "attempts", 0.1
        )
        receiver.failing = False
        assert first.proc.wait(timeout=60) == -signal.SIGKILL, "see cp1.log"
    finally:
        first.stop()
    accepted_before = {q.webhook_id for q in receiver.delivered()}
    assert accepted_before

    second = ControlPlaneProcess(settings, free_port(), tmp_path / "cp2.log")
    try:
        http = httpx.Client(base_url=second.url, timeout=30)
        rows = wait_for(
            lambda: (
                (d := _deliveries(http, t, endpoint["id"]))
                and all(row["status"] == "delivered" for row in d)
                and d
            ),
            90,
            "every delivery to be recorded as delivered",
            0.2,
        )
    finally:
        second.stop()

    outbox = {row["event_id"] for row in rows}
    assert len(rows) == JOBS == len(outbox)
    # Nothing was sent that the outbox does not hold, and everything it holds arrived.
    assert {q.webhook_id for q in receiver.requests()} == outbox
    assert {q.webhook_id for q in receiver.delivered()} == outbox
    # The delivery cut short by the crash was sent again, under the same id.
    successes = [q.webhook_id for q in receiver.delivered()]
    assert any(successes.count(i) >= 2 for i in accepted_before)
    # One event per job, each as the official client reads it.
    unwrap = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9").webhooks.unwrap
    told: dict[str, str] = {}
    for q in receiver.delivered():
        event = unwrap(q.body, q.headers, secret=endpoint["signing_secret"])
        assert event.type == "fine_tuning.job.cancelled"
        assert told.setdefault(event.id, event.data.id) == event.data.id
        assert json.loads(q.body)["id"] == q.webhook_id
    assert sorted(told.values()) == sorted(jobs)

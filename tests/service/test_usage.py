"""Usage accounting on a real database (SQLite and PostgreSQL): what a job's end writes,
once, however often it is told; what the usage API sums; the monthly token budget."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from service.jobs.state import add_event, transition
from service.models import Job, Trial, UsageRecord
from service.models.status import JobStatus
from service.usage.recording import UsageMeter, record_job_usage, running_seconds
from tests.factories import ADMIN, TenantHandle, create_job_ok, make_tenant

DAY = 86400


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    # Status changes at chosen times: a job's worker-seconds are then known exactly.
    clock = Clock(1_000.0)
    monkeypatch.setattr("service.jobs.state.now", clock)
    yield clock


def _usage(client: TestClient, headers: dict[str, str], **q: Any) -> Any:
    r = client.get("/v1/usage", params={"start_time": 0, "end_time": DAY, **q}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _records(app: FastAPI, job_id: str) -> list[UsageRecord]:
    with Session(app.state.engine) as s:
        stmt = select(UsageRecord).where(UsageRecord.job_id == job_id)
        return list(s.exec(stmt))


def test_a_retried_job_is_counted_once_with_every_runs_time(
    client: TestClient, app: FastAPI, clock: Clock
) -> None:
    t = make_tenant(client)
    job = create_job_ok(client, t, resources={"num_workers": 2})
    with Session(app.state.engine) as s:
        clock.t = 1_100.0
        assert transition(s, job["id"], JobStatus.RUNNING)
        clock.t = 1_130.0  # its Ray job was lost: back to the queue
        assert transition(s, job["id"], JobStatus.QUEUED)
        clock.t = 1_140.0
        assert transition(s, job["id"], JobStatus.RUNNING)
        clock.t = 1_200.0
        assert transition(s, job["id"], JobStatus.SUCCEEDED, trained_tokens=4_321)
        s.commit()
        # Told again (a redelivered result, a restarted consumer): nothing more is written.
        record_job_usage(s, job["id"], 1_300.0)
        s.commit()
    [record] = _records(app, job["id"])
    assert record.trained_tokens == 4_321
    # Both runs held 2 workers: (30 s + 60 s) x 2.
    assert record.worker_seconds == pytest.approx(180.0)
    assert record.gpu_seconds == 0.0
    assert (record.kind, record.model, record.tenant_id) == ("training", "tiny-gpt2", t.id)
    body = _usage(client, t.headers, group_by="job_id")
    [result] = body["data"][0]["results"]
    assert (result["job_id"], result["trained_tokens"], result["jobs"]) == (job["id"], 4_321, 1)
    assert result["worker_seconds"] == pytest.approx(180.0)


def test_a_failed_job_counts_what_it_reported_and_a_search_counts_its_trials(
    client: TestClient, app: FastAPI, clock: Clock
) -> None:
    t = make_tenant(client)
    failed = create_job_ok(client, t)
    search = create_job_ok(client, t)
    with Session(app.state.engine) as s:
        assert transition(s, failed["id"], JobStatus.RUNNING)
        add_event(s, failed["id"], t.id, "step 3", type_="metrics", data={"trained_tokens": 77})
        clock.t = 1_010.0
        assert transition(s, failed["id"], JobStatus.FAILED)
        searched = s.get(Job, search["id"])
        assert searched is not None
        searched.search = {"trials": 2}
        for i, (tokens, start, end) in enumerate(
            [(100, 1_000.0, 1_004.0), (200, 1_001.0, 1_011.0)]
        ):
            s.add(
                Trial(
                    id=f"fttrial-{i}",
                    job_id=search["id"],
                    tenant_id=t.id,
                    trial_id=f"t{i}",
                    status="TERMINATED",
                    metrics={"trained_tokens": tokens},
                    created_at=start,
                    updated_at=end,
                )
            )
        assert transition(s, search["id"], JobStatus.RUNNING)
        assert transition(s, search["id"], JobStatus.SUCCEEDED, trained_tokens=300)
        s.commit()
    [failed_record] = _records(app, failed["id"])
    assert failed_record.trained_tokens == 77
    assert failed_record.worker_seconds == pytest.approx(10.0)
    by_trial = {r.trial_id: r for r in _records(app, search["id"])}
    assert set(by_trial) == {None, "t0", "t1"}
    assert [by_trial[k].trained_tokens for k in ("t0", "t1")] == [100, 200]
    assert [by_trial[k].worker_seconds for k in ("t0", "t1")] == [4.0, 10.0]
    assert by_trial[None].trained_tokens == 0  # the trials carry it
    body = _usage(client, t.headers, group_by="job_id")
    sums = {r["job_id"]: r["trained_tokens"] for r in body["data"][0]["results"]}
    assert sums == {failed["id"]: 77, search["id"]: 300}


def test_inference_and_training_by_day_and_model_and_each_tenants_own(
    client: TestClient, app: FastAPI
) -> None:
    a, b = make_tenant(client), make_tenant(client)
    meter: UsageMeter = app.state.usage_meter
    for tenant, model, p, c in [
        (a, "m1", 10, 3),
        (a, "m1", 5, 2),
        (a, "m2", 7, 1),
        (b, "m1", 1, 1),
    ]:
        meter.add(tenant.id, model, p, c)
    meter.flush()
    now_page = client.get("/v1/usage", params={"group_by": "model"}, headers=a.headers).json()
    # Seven daily buckets by default, the last holding today.
    assert len(now_page["data"]) == 7 and not now_page["has_more"]
    today = now_page["data"][-1]["results"]
    assert {
        r["model"]: (r["input_tokens"], r["output_tokens"], r["num_model_requests"]) for r in today
    } == {
        "m1": (15, 5, 2),
        "m2": (7, 1, 1),
    }
    assert all(not bucket["results"] for bucket in now_page["data"][:-1])
    admin = client.get(
        "/v1/admin/usage", params={"group_by": ["tenant_id", "model"]}, headers=ADMIN
    )
    rows = {
        (r["tenant_id"], r["model"]): r["input_tokens"] for r in admin.json()["data"][-1]["results"]
    }
    assert rows == {(a.id, "m1"): 15, (a.id, "m2"): 7, (b.id, "m1"): 1}
    # A tenant's key is not the admin's, and a tenant cannot group by tenant.
    assert client.get("/v1/admin/usage", headers=a.headers).status_code == 403
    bad = client.get("/v1/usage", params={"group_by": "tenant_id"}, headers=a.headers)
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "group_by")
    bad = client.get("/v1/usage", params={"bucket_width": "1m"}, headers=a.headers)
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "bucket_width")


def test_hourly_buckets_page_through_the_range(client: TestClient, app: FastAPI) -> None:
    t = make_tenant(client)
    with Session(app.state.engine) as s:
        for hour in (0, 5, 30):
            s.add(
                UsageRecord(
                    id=f"usage-h{hour}",
                    tenant_id=t.id,
                    kind="inference",
                    model="m",
                    requests=1,
                    prompt_tokens=hour + 1,
                    created_at=hour * 3600 + 10,
                )
            )
        s.commit()
    seen: dict[int, int] = {}
    page = None
    pages = 0
    while True:
        q: dict[str, Any] = {"bucket_width": "1h", "end_time": 2 * DAY}
        if page:
            q["page"] = page
        body = _usage(client, t.headers, **q)
        pages += 1
        for bucket in body["data"]:
            for r in bucket["results"]:
                seen[bucket["start_time"] // 3600] = r["input_tokens"]
        page = body["next_page"]
        if not body["has_more"]:
            break
    assert pages == 2  # 48 hours at 24 a page
    assert seen == {0: 1, 5: 6, 30: 31}


def test_a_submit_past_the_monthly_token_budget_is_a_429_naming_it(
    client: TestClient, app: FastAPI
) -> None:
    t: TenantHandle = make_tenant(client, quotas={"monthly_token_budget": 1_000})
    create_job_ok(client, t)  # nothing used yet
    app.state.usage_meter.add(t.id, "m", 900, 100)
    app.state.usage_meter.flush()
    r = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-gpt2", "training_file": "file-x"},
        headers=t.headers,
    )
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "token_budget_exceeded"
    assert "monthly_token_budget=1000" in error["message"] and "1000 tokens" in error["message"]


def test_running_seconds_counts_each_stretch_on_the_cluster() -> None:
    changes = [
        (0.0, "queued"),
        (10.0, "running"),
        (15.0, "pausing"),
        (20.0, "paused"),
        (50.0, "queued"),
        (60.0, "running"),
        (70.0, "cancelling"),
    ]
    assert running_seconds(changes, 75.0) == 25.0

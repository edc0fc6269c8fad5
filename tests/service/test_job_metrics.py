"""GET /v1/fine_tuning/jobs/{id}/metrics: the loss curves' data (a Tuneplane extension)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session

from service.jobs.state import add_event
from service.models import Job
from tests.factories import create_job_ok, make_tenant


def report(client: TestClient, job: dict[str, Any], message: str, **data: Any) -> None:
    """A metrics event as the event consumer stores a worker's report."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as s:
        add_event(s, job["id"], _tenant_of(s, job["id"]), message, type_="metrics", data=data)
        s.commit()


def _tenant_of(s: Session, job_id: str) -> str:
    job = s.get(Job, job_id)
    assert job is not None
    return job.tenant_id


def test_metrics_list_training_and_validation_points_oldest_first(client: TestClient) -> None:
    tenant = make_tenant(client)
    job = create_job_ok(client, tenant)
    for step in (1, 2, 3):
        report(client, job, f"step {step}", kind="metrics", step=step, epoch=1,
               train_loss=3.0 - step, learning_rate=1e-3)  # fmt: skip
    report(client, job, "eval", kind="eval", step=3, eval_loss=1.5, trial_id="trial_7")
    report(client, job, "no step", kind="metrics", note="ignored")

    r = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics", headers=tenant.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["has_more"] is False
    points = body["data"]
    assert [(p["kind"], p["step"]) for p in points] == [
        ("train", 1), ("train", 2), ("train", 3), ("eval", 3)
    ]  # fmt: skip
    assert points[0]["metrics"] == {"epoch": 1.0, "train_loss": 2.0, "learning_rate": 1e-3}
    assert points[3]["metrics"] == {"eval_loss": 1.5} and points[3]["trial_id"] == "trial_7"
    assert all(p["object"] == "fine_tuning.job.metric" for p in points)
    # Status and message events are not metrics.
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=tenant.headers)
    assert len(events.json()["data"]) > len(points)

    # Paging: after the last point seen, only newer ones.
    first = client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/metrics", params={"limit": 2}, headers=tenant.headers
    ).json()
    assert [p["step"] for p in first["data"]] == [1, 2] and first["has_more"] is True
    rest = client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/metrics",
        params={"after": first["data"][-1]["id"]},
        headers=tenant.headers,
    ).json()
    assert [(p["kind"], p["step"]) for p in rest["data"]] == [("train", 3), ("eval", 3)]


def test_metrics_of_another_tenants_job_are_not_found(client: TestClient) -> None:
    owner, other = make_tenant(client), make_tenant(client)
    job = create_job_ok(client, owner)
    r = client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics", headers=other.headers)
    assert r.status_code == 404
    bad = client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/metrics", params={"after": "ftevent-nope"},
        headers=owner.headers,
    )  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"

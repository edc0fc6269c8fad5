"""Pause and resume as the API answers them, with the real database and Redis queue and a
fixed stand-in for Ray's job list (the runs themselves are tests/service/scheduling/
test_pause_on_ray.py's): which states allow them, what the job shows meanwhile, and that a
paused job holds nothing."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from service.jobs.lifecycle import JobLifecycle
from service.jobs.repository import JobStore
from service.queue import FairQueue
from service.scheduling.reconciler import Reconciler
from service.scheduling.scheduler import Scheduler
from tests.contract.test_openai_contract import validate_pause_resume
from tests.factories import TenantHandle, create_job_ok, make_tenant
from tests.service.scheduling.conftest import FixedCluster, loop_parts
from workers.storage import pause_flag_uri


def _parts(app: FastAPI, queue: FairQueue, cluster: FixedCluster) -> tuple[Scheduler, Reconciler]:
    # No retry: a resumed run that is lost must still get its own try (see below).
    app.state.backend = cluster
    return loop_parts(app, queue, cluster, max_attempts=1)


def _post(client: TestClient, t: TenantHandle, job_id: str, action: str) -> tuple[int, dict]:
    r = client.post(f"/v1/fine_tuning/jobs/{job_id}/{action}", headers=t.headers)
    return r.status_code, r.json()


def _flag(app: FastAPI, job_id: str) -> Path:
    with Session(app.state.engine) as s:
        job = JobStore(s).get(job_id)
        assert job is not None and job.spec is not None
        return Path(pause_flag_uri(job.spec["output_uri"]).removeprefix("file://"))


def _refused(client: TestClient, t: TenantHandle, job_id: str, action: str, said: str) -> None:
    code, body = _post(client, t, job_id, action)
    assert code == 400, body
    error = body["error"]
    assert error["param"] == "fine_tuning_job_id"
    assert error["code"] == {"pause": "job_not_pausable", "resume": "job_not_resumable"}[action]
    assert f"is {said};" in error["message"], error["message"]


def test_pause_then_resume_goes_through_every_state_once(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    _refused(client, t, job_id, "pause", "queued")
    _refused(client, t, job_id, "resume", "queued")
    sched, reconciler = _parts(app, queue, cluster)
    assert sched.tick() == [job_id]

    code, job = _post(client, t, job_id, "pause")
    assert code == 200, job
    # Still running until the run has saved and stopped; `state` says what is under way.
    assert (job["status"], job["state"]) == ("running", "pausing")
    flag = _flag(app, job_id)
    assert flag.is_file(), "the run is asked through the pause file"
    _refused(client, t, job_id, "pause", "being paused")
    _refused(client, t, job_id, "resume", "being paused")

    flag.unlink()  # as if the control plane died before writing it
    reconciler.run_once()  # Ray says RUNNING: the request is written again
    assert flag.is_file()

    cluster.states[job_id] = "SUCCEEDED"  # the run stopped without saying it paused
    reconciler.run_once()
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=t.headers).json()
    assert (job["status"], job["state"]) == ("paused", "paused")
    _refused(client, t, job_id, "pause", "paused")
    with Session(app.state.engine) as s:
        assert job_id not in {h[0] for h in JobStore(s).holdings()}, "paused holds no capacity"

    code, job = _post(client, t, job_id, "resume")
    assert code == 200, job
    assert job["status"] == "queued"
    _refused(client, t, job_id, "resume", "queued")
    assert sched.tick() == [job_id]
    assert not flag.exists(), "a new run starts with no pause request"
    assert cluster.submitted == [job_id, f"{job_id}-attempt2"]
    with Session(app.state.engine) as s:
        row = JobStore(s).get(job_id)
        assert row is not None and (row.attempts, row.pauses) == (2, 1)

    # A resumed run that is lost is retried as a first attempt would be (max_attempts=1
    # would fail it if the resume counted as a retry).
    cluster.states[f"{job_id}-attempt2"] = "MISSING"
    reconciler.run_once()
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=t.headers).json()
    assert job["status"] == "failed", "one try of its own, then it fails"

    events = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}, headers=t.headers
    ).json()["data"]
    said = [e["message"] for e in reversed(events)]
    assert any(m.startswith("Pause requested") for m in said)
    assert any(m.startswith("Job paused") for m in said)
    assert any(m.startswith("Job resumed") for m in said)


def test_cancel_from_paused_and_pausing(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    paused, pausing = (create_job_ok(client, t)["id"] for _ in range(2))
    sched, _ = _parts(app, queue, cluster)
    assert sched.tick() == [paused], "the cluster holds one job at a time"
    assert _post(client, t, paused, "pause")[0] == 200
    assert sched.tick() == [], "a pausing job still holds its capacity"
    with Session(app.state.engine) as s:
        assert JobLifecycle(s).paused(paused, 4)
        s.commit()
    assert sched.tick() == [pausing], "a paused one does not"
    assert _post(client, t, pausing, "pause")[0] == 200
    code, job = _post(client, t, paused, "cancel")
    assert (code, job["status"]) == (200, "cancelled")
    code, job = _post(client, t, pausing, "cancel")
    assert (code, job["state"]) == (200, "cancelling")
    assert cluster.stopped == [pausing]
    _refused(client, t, paused, "resume", "cancelled")


@pytest.mark.parametrize("action", ["pause", "resume"])
def test_the_openai_client_calls_pause_and_resume(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster, action: str
) -> None:
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    sched, _ = _parts(app, queue, cluster)
    sched.tick()
    sdk = openai.OpenAI(
        api_key=t.key, base_url="http://testserver/v1", http_client=client, max_retries=0
    )
    if action == "resume":
        sdk.fine_tuning.jobs.pause(job_id)
        with Session(app.state.engine) as s:
            JobLifecycle(s).paused(job_id, 2)
            s.commit()
        job = sdk.fine_tuning.jobs.resume(job_id)
        assert job.status == "queued"
    else:
        job = sdk.fine_tuning.jobs.pause(job_id)
        assert job.status == "running"
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.fine_tuning.jobs.pause(job_id)
        assert "being paused" in str(refused.value)


def test_pause_and_resume_answer_within_openais_contract(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    sched, _ = _parts(app, queue, cluster)
    assert sched.tick() == [job_id]

    def run_stops() -> None:
        with Session(app.state.engine) as s:
            assert JobLifecycle(s).paused(job_id, 3)
            s.commit()

    client.headers.update(t.headers)
    validate_pause_resume(client, job_id, until_paused=run_stops)

"""`estimated_finish` of a running job from what its workers report, on the real path: the
records a worker sends (as `FineTuneRecipe` and the search's trial events build them) go
through Redis and the event consumer into the database, and the jobs API computes it."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from service.jobs.state import transition
from service.models.status import JobStatus
from service.scheduling.events import EventConsumer
from tests.factories import TenantHandle, create_job_ok, make_tenant, publish_model, upload_ok
from workers.records import ResultData, TrialData
from workers.report import EVENTS_STREAM, EventRecord

JOBS = "/v1/fine_tuning/jobs"


class Worker:
    """Sends a job's records as its worker would, each stamped with the time given."""

    def __init__(self, r: redis.Redis, job_id: str, tenant_id: str) -> None:
        self.r, self.job_id, self.tenant_id = r, job_id, tenant_id

    def send(self, type_: str, at: float, data: dict[str, Any]) -> None:
        record = EventRecord(
            job_id=self.job_id, tenant_id=self.tenant_id, type=type_, data=data, created_at=at
        )
        self.r.xadd(EVENTS_STREAM, record.stream_fields())  # type: ignore[arg-type]

    def step(self, step: int, at: float, total: int, trial: str | None = None) -> None:
        # What FineTuneRecipe._optimizer_step reports.
        data = {
            "step": step,
            "epoch": 1,
            "train_loss": 1.0 / step,
            "learning_rate": 1e-3,
            "tokens_per_second": 100.0,
            "trained_tokens": 10 * step,
            "total_steps": total,
        }
        self.send("metrics", at, {**data, **({"trial_id": trial} if trial else {})})

    def trial(self, trial: str, status: str, at: float) -> None:
        self.send("trial", at, TrialData(trial_id=trial, status=status).event_data())


def _start(app: FastAPI, job_id: str, at: float) -> None:
    with Session(app.state.engine) as s:
        assert transition(s, job_id, JobStatus.RUNNING, started_at=at)
        s.commit()


def _eta(client: TestClient, t: TenantHandle, job_id: str) -> Any:
    return client.get(f"{JOBS}/{job_id}", headers=t.headers).json()["estimated_finish"]


def test_a_running_job_finishes_after_its_steps_left_at_the_measured_step_time(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    t = make_tenant(client)
    file_id = upload_ok(client, t)
    job_id = create_job_ok(client, t, training_file=file_id)["id"]
    queued = create_job_ok(client, t, training_file=file_id)["id"]
    consumer = EventConsumer(app.state.engine, redis_client, "cp", "replica-1")
    worker = Worker(redis_client, job_id, t.id)
    t0 = time.time() - 60
    _start(app, job_id, t0)
    assert _eta(client, t, job_id) is None  # running, no step reported yet

    worker.step(50, t0 - 100, 20)  # an earlier run's: before this one started
    worker.step(1, t0 + 2, 20)
    consumer.poll(block_ms=100)
    assert _eta(client, t, job_id) is None  # one step: no step time measured yet

    for step in (2, 3, 4):  # 2 s a step
        worker.step(step, t0 + 2 * step, 20)
        # Evaluation passes are metrics events too, but not steps.
        worker.send("eval", t0 + 2 * step + 1.5, {"step": step, "eval_loss": 1.0})
    consumer.poll(block_ms=100)
    # 16 steps left at 2 s each.
    expected = time.time() + 32
    assert _eta(client, t, job_id) == pytest.approx(expected, abs=3)
    page = client.get(JOBS, headers=t.headers).json()["data"]
    etas = {j["id"]: j["estimated_finish"] for j in page}
    assert etas[job_id] == pytest.approx(expected, abs=3) and etas[queued] is None

    result = ResultData(
        artifact_uri=publish_model(app.state.store, t.id, job_id),
        adapter="lora",
        trained_tokens=1,
        steps=20,
        metrics={},
    )
    worker.send("result", time.time(), result.event_data())
    consumer.poll(block_ms=100)
    job = client.get(f"{JOBS}/{job_id}", headers=t.headers).json()
    assert job["status"] == "succeeded" and job["estimated_finish"] is None


def test_a_search_finishes_when_its_trials_left_have_run_concurrency_at_a_time(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    t = make_tenant(client)
    search = {
        "space": {"learning_rate": {"type": "choice", "values": [1e-4, 1e-3]}},
        "num_trials": 4,
        "max_concurrent_trials": 2,
    }
    job_id = create_job_ok(client, t, validation_file=upload_ok(client, t), search=search)["id"]
    consumer = EventConsumer(app.state.engine, redis_client, "cp", "replica-1")
    worker = Worker(redis_client, job_id, t.id)
    now = time.time()
    _start(app, job_id, now - 60)
    # trial_0 ran 40 s; trial_1 started 10 s ago and measured 1 s a step, 7 of 10 left.
    worker.trial("t0", "running", now - 60)
    worker.trial("t0", "terminated", now - 20)
    worker.trial("t1", "running", now - 10)
    for step in (1, 2, 3):
        worker.step(step, now - 3 + step, 10, trial="t1")
    consumer.poll(block_ms=100)
    # Left: t1's 7 s, and 2 trials not started of 40 s each; 2 at once: (7 + 80) / 2.
    assert _eta(client, t, job_id) == pytest.approx(time.time() + 43.5, abs=3)

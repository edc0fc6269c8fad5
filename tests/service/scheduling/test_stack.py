"""The whole path on real components: API -> database -> Redis queue -> scheduler ->
Ray Jobs -> workers.run_job (Ray Train) -> Redis events -> database -> API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from service.config import Settings
from service.main import create_app
from service.models import JobEvent
from service.ray_backend import RayJobsBackend, submission_id
from service.stack import free_port
from tests.factories import ADMIN, TenantHandle, jsonl, make_tenant, prompt_completion_records
from tests.fixtures.stack import ControlPlaneProcess, wait_for

TERMINAL = ("succeeded", "failed", "cancelled")


def _data(n: int) -> bytes:
    return jsonl(prompt_completion_records(n))


def _submit(http: Any, tenant: TenantHandle, **extra: Any) -> str:
    up = http.post(
        "/v1/files",
        files={"file": ("t.jsonl", _data(24), "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=tenant.headers,
    )
    assert up.status_code == 200, up.text
    body = {
        "model": "tiny-gpt2",
        "training_file": up.json()["id"],
        "validation_file": up.json()["id"],
        "hyperparameters": {"n_epochs": 1, "batch_size": 4},
        **extra,
    }
    r = http.post("/v1/fine_tuning/jobs", json=body, headers=tenant.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _job(http: Any, tenant: TenantHandle, job_id: str) -> dict[str, Any]:
    return dict(http.get(f"/v1/fine_tuning/jobs/{job_id}", headers=tenant.headers).json())


def _events(http: Any, tenant: TenantHandle, job_id: str) -> list[dict[str, Any]]:
    r = http.get(
        f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}, headers=tenant.headers
    )
    return list(r.json()["data"])


def test_two_tenants_jobs_run_to_success_on_ray(stack_settings: Settings) -> None:
    with TestClient(create_app(stack_settings)) as http:
        a = make_tenant(http, "team-a")
        b = make_tenant(http, "team-b")
        job_a = _submit(http, a, suffix="a")
        job_b = _submit(http, b, suffix="b")
        done = wait_for(
            lambda: all(
                _job(http, t, j)["status"] in TERMINAL for t, j in ((a, job_a), (b, job_b))
            ),
            240,
            "both jobs to finish",
            1.0,
        )
        assert done
        for tenant, job_id, other in ((a, job_a, b), (b, job_b, a)):
            job = _job(http, tenant, job_id)
            assert job["status"] == "succeeded", (job, _events(http, tenant, job_id)[:5])
            assert job["fine_tuned_model"] == f"ft:tiny-gpt2:{tenant.name}:{job['suffix']}:{job_id}"
            assert job["trained_tokens"] > 0
            assert job["finished_at"] >= job["started_at"] >= job["created_at"]
            events = _events(http, tenant, job_id)
            losses = [
                e["data"]["train_loss"]
                for e in events
                if e["type"] == "metrics" and "train_loss" in e["data"]
            ]
            assert losses, "per-step metrics arrive as events"
            ckpts = http.get(
                f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=tenant.headers
            ).json()
            assert ckpts["data"], "checkpoints are visible"
            own = {m["id"] for m in http.get("/v1/models", headers=tenant.headers).json()["data"]}
            theirs = {m["id"] for m in http.get("/v1/models", headers=other.headers).json()["data"]}
            assert job["fine_tuned_model"] in own
            assert job["fine_tuned_model"] not in theirs
            artifact = (
                Path(stack_settings.data_dir) / "artifacts" / tenant.id / "jobs" / job_id / "model"
            )
            assert any(artifact.glob("*.safetensors"))


def test_cancel_a_running_job_stops_its_ray_job(stack_settings: Settings) -> None:
    with TestClient(create_app(stack_settings)) as http:
        t = make_tenant(http)
        job_id = _submit(http, t, hyperparameters={"n_epochs": 50, "batch_size": 2})
        wait_for(
            lambda: any(e["type"] == "metrics" for e in _events(http, t, job_id)),
            120,
            "the job to be training",
        )
        r = http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=t.headers)
        assert r.json()["state"] in ("cancelling", "cancelled")
        wait_for(lambda: _job(http, t, job_id)["status"] == "cancelled", 90, "the cancel to finish")
        backend = RayJobsBackend(stack_settings.ray_address or "")
        assert wait_for(
            lambda: backend.state(submission_id(job_id, 1)) in ("STOPPED", "FAILED"),
            30,
            "Ray to stop",
        )
        assert _job(http, t, job_id)["fine_tuned_model"] is None


# A fault scenario of over a minute: with the others in `make test-long`.
@pytest.mark.long
def test_kill9_and_redis_flush_lose_no_job_and_run_none_twice(
    stack_settings: Settings, tmp_path: Path
) -> None:
    # Room for one job at a time, so some are queued and one runs when the kill comes.
    settings = stack_settings.model_copy(update={"cluster_cpus": 2.0, "reserved_cpus": 1.0})
    port = free_port()
    first = ControlPlaneProcess(settings, port, tmp_path / "cp1.log")
    try:
        http: Any = __import__("httpx").Client(base_url=first.url, timeout=30)
        created = http.post("/v1/admin/tenants", json={"name": "crash"}, headers=ADMIN).json()
        t = TenantHandle(created["tenant"]["id"], "crash", created["api_key"])
        jobs = [_submit(http, t) for _ in range(3)]
        wait_for(
            lambda: any(_job(http, t, j)["status"] == "running" for j in jobs), 60, "a job to start"
        )
        first.kill9()
    finally:
        first.stop()
    redis.Redis.from_url(settings.redis_url or "").flushall()

    second = ControlPlaneProcess(settings, port, tmp_path / "cp2.log")
    try:
        wait_for(
            lambda: all(_job(http, t, j)["status"] in TERMINAL for j in jobs),
            300,
            "every job to end after the restart",
            1.0,
        )
        backend = RayJobsBackend(settings.ray_address or "")
        for job_id in jobs:
            job = _job(http, t, job_id)
            assert job["status"] == "succeeded", (job, _events(http, t, job_id)[:5])
            # Started exactly once: one attempt, one start event, one Ray job.
            starts = [e for e in _events(http, t, job_id) if e["message"].startswith("Job started")]
            assert len(starts) == 1
            # The driver may still be exiting just after it reported its result.
            sid = submission_id(job_id, 1)

            def ray_succeeded(sid: str = sid) -> bool:
                return backend.state(sid) == "SUCCEEDED"

            assert wait_for(ray_succeeded, 60, "Ray's end")
            assert backend.state(submission_id(job_id, 2)) == "MISSING"
    finally:
        second.stop()
    engine = create_app(settings).state.engine
    with Session(engine) as s:
        for job_id in jobs:
            ids = s.exec(select(JobEvent.id).where(JobEvent.job_id == job_id)).all()
            assert len(ids) == len(set(ids))
    engine.dispose()


def test_a_search_runs_through_the_service_and_its_winner_becomes_the_model(
    stack_settings: Settings,
) -> None:
    with TestClient(create_app(stack_settings)) as http:
        t = make_tenant(http, "tuners")
        search = {
            "space": {"learning_rate": {"type": "grid", "values": [1e-4, 3e-3]}},
            "algorithm": "grid",
            "scheduler": "fifo",
            "num_trials": 1,
        }
        job_id = _submit(http, t, suffix="best", search=search)
        wait_for(lambda: _job(http, t, job_id)["status"] in TERMINAL, 300, "the search", 1.0)
        job = _job(http, t, job_id)
        assert job["status"] == "succeeded", (job, _events(http, t, job_id)[:5])
        trials = http.get(f"/v1/fine_tuning/jobs/{job_id}/trials", headers=t.headers).json()
        assert sorted(x["params"]["learning_rate"] for x in trials["data"]) == [1e-4, 3e-3]
        assert {x["status"] for x in trials["data"]} == {"terminated"}
        best = job["search_result"]
        assert best["metric"] == "eval_loss"
        by_id = {x["trial_id"]: x for x in trials["data"]}
        assert best["value"] == min(x["best_metric"] for x in trials["data"])
        assert by_id[best["trial_id"]]["best_metric"] == best["value"]
        assert job["fine_tuned_model"] == f"ft:tiny-gpt2:tuners:best:{job_id}"
        models = {m["id"] for m in http.get("/v1/models", headers=t.headers).json()["data"]}
        assert job["fine_tuned_model"] in models

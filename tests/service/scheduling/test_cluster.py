"""Multi-process and multi-node behaviour: several control plane replicas on one
PostgreSQL and one Redis, and a Ray cluster of several nodes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.config import Settings
from service.ray_backend import RayJobsBackend, submission_id
from service.stack import RayHead, free_port, start_ray_head, start_ray_worker
from tests.factories import ADMIN, TenantHandle, jsonl, prompt_completion_records
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.ray_cluster import RayCluster
from tests.fixtures.stack import ControlPlaneProcess, wait_for

TERMINAL = ("succeeded", "failed", "cancelled")
_dbs = itertools.count()


def _tenant(http: httpx.Client, name: str) -> TenantHandle:
    created = http.post("/v1/admin/tenants", json={"name": name}, headers=ADMIN).json()
    return TenantHandle(created["tenant"]["id"], name, created["api_key"])


def _submit(http: httpx.Client, t: TenantHandle, **extra: Any) -> str:
    up = http.post(
        "/v1/files",
        files={"file": ("t.jsonl", jsonl(prompt_completion_records(16)), "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=t.headers,
    )
    body = {
        "model": "tiny-gpt2",
        "training_file": up.json()["id"],
        "hyperparameters": {"n_epochs": 1, "batch_size": 4},
        **extra,
    }
    r = http.post("/v1/fine_tuning/jobs", json=body, headers=t.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _status(http: httpx.Client, t: TenantHandle, job_id: str) -> str:
    return str(http.get(f"/v1/fine_tuning/jobs/{job_id}", headers=t.headers).json()["status"])


def _starts(http: httpx.Client, t: TenantHandle, job_id: str) -> int:
    events = http.get(
        f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}, headers=t.headers
    ).json()["data"]
    return sum(1 for e in events if e["message"].startswith("Job started"))


# A leader killed and replaced, over a minute: with the fault scenarios in `make test-long`.
@pytest.mark.long
def test_two_replicas_on_postgres_run_each_job_once_and_hand_over_leadership(
    stack_settings: Settings, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    name = f"replicas_{next(_dbs)}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    settings = stack_settings.model_copy(
        update={"database_url": postgres_server.url(name), "leader_ttl_s": 3.0}
    )
    replicas = [
        ControlPlaneProcess(settings, free_port(), tmp_path / f"replica{i}.log") for i in (0, 1)
    ]
    try:
        clients = [httpx.Client(base_url=r.url, timeout=30) for r in replicas]
        t = _tenant(clients[0], "shared")
        # Submitted to either replica, alternately.
        jobs = [_submit(clients[i % 2], t) for i in range(3)]
        leaders = wait_for(
            lambda: [
                i for i, c in enumerate(clients) if c.get("/readyz").json()["scheduler_leader"]
            ],
            30,
            "a scheduler leader",
        )
        assert len(leaders) == 1, "exactly one replica schedules"
        leader = leaders[0]
        wait_for(
            lambda: any(_status(clients[leader], t, j) in ("running", *TERMINAL) for j in jobs),
            60,
            "the leader to start a job",
        )
        replicas[leader].kill9()
        survivor = clients[1 - leader]
        wait_for(
            lambda: survivor.get("/readyz").json()["scheduler_leader"], 30, "the other to lead"
        )
        wait_for(
            lambda: all(_status(survivor, t, j) in TERMINAL for j in jobs),
            300,
            "every job to end",
            1.0,
        )
        for job_id in jobs:
            assert _status(survivor, t, job_id) == "succeeded"
            assert _starts(survivor, t, job_id) == 1, "started exactly once"
    finally:
        for r in replicas:
            r.stop()


@pytest.fixture
def three_node_cluster(ray_cluster: RayCluster, tmp_path: Path) -> Iterator[RayHead]:
    """A head that runs no training (0 CPUs) and two 1-CPU worker nodes."""
    env = {k: v for k, v in ray_cluster.env.items() if k != "RAY_ADDRESS"}
    head = start_ray_head(tmp_path, num_cpus=0, env=env, extra_args=("--num-gpus=0",))
    workers = []
    try:
        for i in (1, 2):
            workers.append(start_ray_worker(head, tmp_path, f"node{i}", num_cpus=1, env=env))
        yield head
    finally:
        # Throwaway nodes: Ray's processes outlive a SIGTERM by the whole default grace.
        for w in workers:
            w.stop(grace_s=2.0)
        head.process.stop(grace_s=2.0)


def test_two_worker_job_spreads_over_two_nodes(
    stack_settings: Settings, three_node_cluster: RayHead, tmp_path: Path
) -> None:
    head = three_node_cluster
    settings = stack_settings.model_copy(
        update={"ray_address": head.dashboard_url, "reserved_cpus": 0.0}
    )
    redis.Redis.from_url(settings.redis_url or "").flushall()
    plane = ControlPlaneProcess(settings, free_port(), tmp_path / "cp.log")
    try:
        http = httpx.Client(base_url=plane.url, timeout=30)
        t = _tenant(http, "multinode")
        job_id = _submit(http, t, resources={"num_workers": 2, "cpus_per_worker": 1})
        wait_for(lambda: _status(http, t, job_id) in TERMINAL, 300, "the job to end", 1.0)
        assert _status(http, t, job_id) == "succeeded"
        backend = RayJobsBackend(head.dashboard_url)
        assert backend.state(submission_id(job_id, 1)) in ("SUCCEEDED", "RUNNING")
        actors = httpx.get(
            f"{head.dashboard_url}/api/v0/actors",
            params={"detail": "1", "limit": "10000"},
            headers=backend._headers(),
            timeout=10,
        ).json()["data"]["result"]["result"]
        trainers = [a for a in actors if "TrainWorker" in str(a.get("class_name"))]
        assert len(trainers) == 2, [a.get("class_name") for a in actors]
        assert len({a["node_id"] for a in trainers}) == 2, "the two workers share a node"
    finally:
        plane.stop()

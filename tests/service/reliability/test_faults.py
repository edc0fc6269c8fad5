"""Faults the service must survive, on real processes: the control plane (uvicorn, its
loops) as a child process, a real Redis, real Ray clusters, real training jobs.

For each fault: no job is lost (every one ends `succeeded`), none runs twice (one Ray
submission ran to the end; an attempt the control plane retried never ran on Ray beside
it), none is left non-terminal (the tests wait for every job to end), and the job's events
say what happened.

Where the kill lands: the control plane kills itself with a real SIGKILL at a named crash
point (`TUNEPLANE_FAULT_CRASH_AT`, service/faults.py), so "during dispatch" is exactly
between the database commit that starts a job and Ray's submission, and "during event
ingestion" exactly between storing a batch of worker events and acknowledging it. Redis
and Ray nodes are killed from outside once the job's events prove it is training.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.stack import RayHead, _nodes, free_port, start_ray_head, start_ray_worker
from tests.fixtures.ray_cluster import RayCluster
from tests.fixtures.stack import ControlPlaneProcess, wait_for
from tests.service.reliability.harness import (
    RedisProcess,
    assert_trained_once,
    events,
    kill9,
    make_tenant,
    messages,
    ray_states,
    starts,
    status,
    submit,
    train_steps,
    transitions,
    wait_terminal,
)

pytestmark = [pytest.mark.ray, pytest.mark.long]
# A run of 128 steps.
LONG: dict[str, Any] = {"examples": 64, "n_epochs": 2, "batch_size": 1}
# Tiny-gpt2 trains ~50 steps a second here: a fault injected once the first steps or a
# checkpoint are seen needs a run of many seconds to be sure to land inside it.
LONGER: dict[str, Any] = {"examples": 64, "n_epochs": 16, "batch_size": 1}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def settings(stack_settings: Settings, own_redis: RedisProcess) -> Settings:
    # One job at a time (2 CPUs, 1 held back), quick loops, a short dispatch grace.
    return stack_settings.model_copy(
        update={
            "redis_url": own_redis.url,
            "cluster_cpus": 2.0,
            "reserved_cpus": 1.0,
            "dispatch_grace_s": 3.0,
            "events_reclaim_idle_s": 1.0,
        }
    )


class _CrashingPlane(ControlPlaneProcess):
    """A control plane armed to crash, which may do so before it ever answers /readyz
    (the work that trips it may be waiting for it)."""

    def _ready(self) -> bool:
        return self.proc.poll() is not None or super()._ready()


def _crashing(settings: Settings, point: str, log: Path) -> ControlPlaneProcess:
    armed = settings.model_copy(update={"fault_crash_at": point})
    return _CrashingPlane(armed, free_port(), log)


def _wait_killed(plane: ControlPlaneProcess) -> None:
    """The control plane reached its crash point and died of SIGKILL."""
    code = plane.proc.wait(timeout=120)
    plane.stop()
    assert code == -signal.SIGKILL, f"exit code {code}, not a SIGKILL: see {plane.log.name}"


def test_sigkill_between_starting_a_job_and_submitting_it_to_ray(
    settings: Settings, tmp_path: Path
) -> None:
    first = _crashing(settings, "dispatch.after_commit", tmp_path / "cp1.log")
    http = httpx.Client(base_url=first.url, timeout=30)
    t = make_tenant(http, "dispatch")
    job_id = submit(http, t)
    _wait_killed(first)
    # The crash left the job `running` in the database with nothing on Ray.
    address = settings.ray_address or ""
    assert ray_states(address, job_id, 1) == ["MISSING"]

    second = ControlPlaneProcess(settings, free_port(), tmp_path / "cp2.log")
    try:
        http = httpx.Client(base_url=second.url, timeout=30)
        wait_terminal(http, t, [job_id], 240)
        assert status(http, t, job_id) == "succeeded"
        evs = events(http, t, job_id)
        assert starts(evs) == [1, 2]
        assert any("was lost" in m and "queued again" in m for m in messages(evs))
        # Attempt 1 never reached Ray; attempt 2 is the one run.
        assert ray_states(address, job_id, 3) == ["MISSING", "SUCCEEDED", "MISSING"]
        steps = train_steps(evs)
        assert steps == sorted(set(steps)) and steps
    finally:
        second.stop()


def test_sigkill_while_ingesting_worker_events(settings: Settings, tmp_path: Path) -> None:
    # Two crashes in one job's life: with a batch of training metrics applied but not
    # committed, then with the batch holding its result committed but not acknowledged.
    first = _crashing(settings, "events.before_commit:metrics", tmp_path / "cp1.log")
    http = httpx.Client(base_url=first.url, timeout=30)
    t = make_tenant(http, "ingest")
    job_id = submit(http, t)
    _wait_killed(first)
    second = _crashing(settings, "events.after_commit:result", tmp_path / "cp2.log")
    _wait_killed(second)

    third = ControlPlaneProcess(settings, free_port(), tmp_path / "cp3.log")
    try:
        http = httpx.Client(base_url=third.url, timeout=30)
        wait_terminal(http, t, [job_id], 240)
        assert status(http, t, job_id) == "succeeded"
        evs = events(http, t, job_id)
        # The batches the dead replicas read were taken over and stored exactly once:
        # every training step once, in order, none missing; one start; one result.
        steps = train_steps(evs)
        assert steps == list(range(1, max(steps) + 1))
        assert starts(evs) == [1]
        results = [e for e in evs if (e.get("data") or {}).get("kind") == "result"]
        assert len(results) == 1
        # One transition to succeeded (the control plane's own status events).
        assert len(transitions(evs, "succeeded")) == 1
        assert ray_states(settings.ray_address or "", job_id, 2) == ["SUCCEEDED", "MISSING"]
    finally:
        third.stop()


def test_redis_restarted_and_redis_data_lost(
    settings: Settings, own_redis: RedisProcess, tmp_path: Path
) -> None:
    plane = ControlPlaneProcess(settings, free_port(), tmp_path / "cp.log")
    try:
        http = httpx.Client(base_url=plane.url, timeout=30)
        t = make_tenant(http, "redis")
        # Long enough to be mid-training at each kill; the second job waits in the queue.
        # Two long runs (each is killed under), then one that waits in the queue.
        jobs = [submit(http, t, **LONGER), submit(http, t, **LONGER), submit(http, t)]

        def training(job_id: str) -> bool:
            return len(train_steps(events(http, t, job_id))) >= 2

        # 1. Redis dies (SIGKILL) mid-training and comes back with its data (AOF).
        wait_for(lambda: training(jobs[0]), 180, "the first job to train")
        own_redis.kill9()
        wait_for(
            lambda: http.get("/readyz").status_code == 503, 30, "readiness to report Redis down"
        )
        own_redis.start()
        wait_for(lambda: http.get("/readyz").status_code == 200, 30, "readiness to recover")

        # 2. Redis dies mid-training of the next job and comes back empty.
        wait_for(lambda: training(jobs[1]), 240, "the second job to train")
        own_redis.kill9()
        own_redis.wipe()
        own_redis.start()

        wait_terminal(http, t, jobs, 300)
        for job_id in jobs:
            evs = events(http, t, job_id)
            assert status(http, t, job_id) == "succeeded", messages(evs)[-5:]
            assert starts(evs) == [1], "started exactly once"
            assert ray_states(settings.ray_address or "", job_id, 2) == ["SUCCEEDED", "MISSING"]
            steps = train_steps(evs)
            assert steps == sorted(set(steps)), "no step stored twice"
        # A restart that keeps the data loses no event.
        first = train_steps(events(http, t, jobs[0]))
        assert first == list(range(1, max(first) + 1))
        # Lost data is said: on the running job, and on the queued one put back in the queue.
        said = [m for j in jobs[1:] for m in messages(events(http, t, j))]
        assert any("Redis lost its data" in m for m in said), said
    finally:
        plane.stop()


def _own_env(ray_cluster: RayCluster) -> dict[str, str]:
    env = {k: v for k, v in ray_cluster.env.items() if k != "RAY_ADDRESS"}
    # Dead nodes are noticed within seconds, not Ray's default half minute.
    return {**env, "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4"}


def test_worker_node_killed_during_training(
    settings: Settings, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    env = _own_env(ray_cluster)
    # The head runs no training (0 CPUs): the job's workers can only be on node1.
    head = start_ray_head(tmp_path, num_cpus=0, env=env, extra_args=("--num-gpus=0",))
    nodes = [start_ray_worker(head, tmp_path, "node1", num_cpus=2, env=env)]
    plane: ControlPlaneProcess | None = None
    try:
        cp_settings = settings.model_copy(
            update={"ray_address": head.dashboard_url, "cluster_cpus": None, "reserved_cpus": 0.0}
        )
        plane = ControlPlaneProcess(cp_settings, free_port(), tmp_path / "cp.log")
        http = httpx.Client(base_url=plane.url, timeout=30)
        t = make_tenant(http, "nodes")
        job_id = submit(http, t, **LONGER, checkpoint_every_steps=64)
        wait_for(
            lambda: any("Checkpoint saved" in m for m in messages(events(http, t, job_id))),
            180,
            "a checkpoint",
        )
        kill9(nodes[0])
        # Ray marks the node dead (the head alone is left) before its replacement joins.
        wait_for(lambda: len(_nodes(head.dashboard_url)) == 1, 60, "Ray to see node1 gone")
        # A replacement node (what an autoscaler would bring): training resumes there.
        nodes.append(start_ray_worker(head, tmp_path, "node2", num_cpus=2, env=env))
        wait_terminal(http, t, [job_id], 240)
        evs = events(http, t, job_id)
        assert status(http, t, job_id) == "succeeded", messages(evs)[-5:]
        said = messages(evs)
        assert any("training worker 0 failed" in m for m in said), said
        assert any("resumed from the checkpoint at step" in m for m in said), said
        # Ray Train restarted the workers inside the one Ray job: no second submission.
        assert starts(evs) == [1]
        assert ray_states(head.dashboard_url, job_id, 2) == ["SUCCEEDED", "MISSING"]
        # The steps after the checkpoint ran twice; the tokens are counted once.
        assert settings.models_dir is not None
        assert_trained_once(
            http, t, job_id, settings.models_dir, LONGER["examples"], LONGER["n_epochs"]
        )
    finally:
        if plane is not None:
            plane.stop()
        for node in nodes:
            node.stop()
        head.process.stop()


def test_ray_head_restarted_during_training(
    settings: Settings, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    env = _own_env(ray_cluster)
    dashboard_port, gcs_port = free_port(), free_port()

    def head_up() -> RayHead:
        return start_ray_head(
            tmp_path,
            num_cpus=2,
            env=env,
            extra_args=("--num-gpus=0",),
            dashboard_port=dashboard_port,
            gcs_port=gcs_port,
        )

    head = head_up()
    plane: ControlPlaneProcess | None = None
    try:
        cp_settings = settings.model_copy(update={"ray_address": head.dashboard_url})
        plane = ControlPlaneProcess(cp_settings, free_port(), tmp_path / "cp.log")
        http = httpx.Client(base_url=plane.url, timeout=30)
        t = make_tenant(http, "head")
        job_id = submit(http, t, **LONG)
        # Once the run is on Ray (its workers start after this), any moment loses it.
        wait_for(lambda: "training started" in messages(events(http, t, job_id)), 180, "a run")
        kill9(head.process)  # the head, its GCS, the job's driver and workers, all at once
        head = head_up()
        wait_terminal(http, t, [job_id], 240)
        evs = events(http, t, job_id)
        assert status(http, t, job_id) == "succeeded", messages(evs)[-5:]
        assert starts(evs) == [1, 2]
        assert any("was lost" in m and "queued again" in m for m in messages(evs))
        # The restarted head knows only attempt 2; attempt 1 died with the old head.
        assert ray_states(head.dashboard_url, job_id, 3) == ["MISSING", "SUCCEEDED", "MISSING"]
        # Run twice, counted once.
        assert settings.models_dir is not None
        assert_trained_once(
            http, t, job_id, settings.models_dir, LONG["examples"], LONG["n_epochs"]
        )
    finally:
        if plane is not None:
            plane.stop()
        head.process.stop()


def test_sigkill_while_pausing_and_while_paused(settings: Settings, tmp_path: Path) -> None:
    """Killed between committing a pause and asking the run, then again while the job is
    paused: the pause still lands, nothing starts while paused, and the resumed run goes
    on from the pause's checkpoint, each step trained once. (The run is long enough that a
    loaded machine cannot finish it before the pause lands; once the resumed run is seen
    going on from the right step, it is cancelled.)"""
    address = settings.ray_address or ""
    first = _crashing(settings, "pause.after_commit", tmp_path / "cp1.log")
    http = httpx.Client(base_url=first.url, timeout=30)
    t = make_tenant(http, "pause")
    job_id = submit(http, t, **{**LONGER, "n_epochs": 200})
    wait_for(lambda: len(train_steps(events(http, t, job_id))) >= 2, 180, "training")
    with pytest.raises(httpx.TransportError):
        http.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=t.headers)
    _wait_killed(first)  # `pausing` is committed; the run was never asked

    second = ControlPlaneProcess(settings, free_port(), tmp_path / "cp2.log")
    try:
        http = httpx.Client(base_url=second.url, timeout=30)
        wait_for(lambda: status(http, t, job_id) == "paused", 120, "the pause to land")
        second.kill9()
    finally:
        second.stop()

    third = ControlPlaneProcess(settings, free_port(), tmp_path / "cp3.log")
    try:
        http = httpx.Client(base_url=third.url, timeout=30)
        assert status(http, t, job_id) == "paused"
        evs = events(http, t, job_id)
        assert starts(evs) == [1], "nothing started while paused"
        assert ray_states(address, job_id, 2) == ["SUCCEEDED", "MISSING"]
        paused_at = transitions(evs, "paused")[0]["data"]["step"]
        assert train_steps(evs) == list(range(1, paused_at + 1))
        r = http.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=t.headers)
        listed = {c["step_number"] for c in r.json()["data"]}
        assert paused_at in listed, "the pause's checkpoint is kept and listed"
        r = http.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=t.headers)
        assert r.status_code == 200, r.text
        wait_for(
            lambda: len(train_steps(events(http, t, job_id))) >= paused_at + 3,
            180,
            "the resumed run to train",
        )
        r = http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=t.headers)
        assert r.status_code == 200, r.text
        wait_terminal(http, t, [job_id], 120)
        evs = events(http, t, job_id)
        assert status(http, t, job_id) == "cancelled", messages(evs)[-5:]
        assert starts(evs) == [1, 2]
        assert len(transitions(evs, "paused")) == 1
        assert f"resumed from the checkpoint at step {paused_at}" in messages(evs)
        steps = train_steps(evs)
        assert steps == list(range(1, len(steps) + 1)), "each step once, in order"
        first_run, second_run, no_third = ray_states(address, job_id, 3)
        assert (first_run, no_third) == ("SUCCEEDED", "MISSING")
        assert second_run in ("STOPPED", "FAILED"), "the cancel stopped the resumed run"
    finally:
        third.stop()

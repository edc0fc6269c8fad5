from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.queue import FairQueue
from service.scheduling.events import EventConsumer
from tests.factories import TenantHandle, create_job_ok, make_tenant
from tests.service.scheduling.conftest import FixedCluster, loop_parts
from workers.records import ResultData
from workers.report import EVENTS_STREAM, EventRecord


def _job(client: TestClient, t: TenantHandle, job_id: str) -> dict[str, object]:
    return dict(client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=t.headers).json())


def _messages(client: TestClient, t: TenantHandle, job_id: str) -> list[str]:
    r = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}, headers=t.headers
    )
    return [e["message"] for e in r.json()["data"]]


def test_a_lost_ray_job_is_retried_then_failed(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    sched, reconciler = loop_parts(app, queue, cluster)
    assert sched.tick() == [job_id]
    cluster.states[job_id] = "MISSING"  # the Ray head restarted and forgot it
    reconciler.run_once()
    assert _job(client, t, job_id)["status"] == "queued"
    assert any("was lost" in m and "queued again" in m for m in _messages(client, t, job_id))
    assert sched.tick() == [job_id]
    assert cluster.submitted == [job_id, f"{job_id}-attempt2"]  # a new Ray submission id
    cluster.states[f"{job_id}-attempt2"] = "MISSING"
    reconciler.run_once()
    job = _job(client, t, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "dispatch_failed"  # type: ignore[index]


def test_ray_failure_fails_the_job_with_rays_words(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    sched, reconciler = loop_parts(app, queue, cluster)
    sched.tick()
    cluster.states[job_id] = "FAILED"
    reconciler.run_once()
    job = _job(client, t, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "training_failed"  # type: ignore[index]


def test_a_lost_result_is_recovered_from_the_published_artifact(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client, "recover")
    job_id = create_job_ok(client, t, suffix="r")["id"]
    sched, reconciler = loop_parts(app, queue, cluster)
    sched.tick()
    # The worker published its model, then its result event was lost with Redis.
    manifest = {"job_id": job_id, "metrics": {"trained_tokens": 321, "eval_loss": 1.5}}
    app.state.store.write_bytes(
        f"{t.id}/jobs/{job_id}/model/tuneplane.json", json.dumps(manifest).encode()
    )
    app.state.store.write_bytes(f"{t.id}/jobs/{job_id}/model/adapter_model.safetensors", b"\0" * 64)
    cluster.states[job_id] = "SUCCEEDED"
    reconciler._succeeded_seen[job_id] = 0.0  # Ray said so long ago: the grace is over
    reconciler.run_once()
    job = _job(client, t, job_id)
    assert job["status"] == "succeeded"
    assert job["fine_tuned_model"] == f"ft:tiny-gpt2:recover:r:{job_id}"
    assert job["trained_tokens"] == 321
    models = client.get("/v1/models", headers=t.headers).json()["data"]
    assert job["fine_tuned_model"] in {m["id"] for m in models}


def test_queued_jobs_redis_lost_are_enqueued_again(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    # One CPU each, so that all three fit at once below (left "auto", the first would take
    # the whole idle cluster).
    one_cpu = {"cpus_per_worker": 1}
    jobs = [create_job_ok(client, t, resources=one_cpu)["id"] for _ in range(3)]
    queue.r.flushall()
    sched, reconciler = loop_parts(app, queue, cluster)
    assert sched.tick() == []
    reconciler.run_once()
    assert queue.depth(t.id) == 3
    cluster.capacity = cluster.capacity.__class__(cpus=10, gpus=0)
    assert sorted(sched.tick()) == sorted(jobs)


def test_a_cancelling_job_is_stopped_and_ends_cancelled(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    sched, reconciler = loop_parts(app, queue, cluster)
    sched.tick()
    app.state.backend = cluster
    r = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=t.headers)
    assert (r.json()["status"], r.json()["state"]) == ("running", "cancelling")
    assert cluster.stopped == [job_id]
    reconciler.run_once()  # Ray still says RUNNING: stop again, stay cancelling
    assert _job(client, t, job_id)["state"] == "cancelling"
    cluster.states[job_id] = "STOPPED"
    reconciler.run_once()
    assert _job(client, t, job_id)["status"] == "cancelled"


def _internal_failure(queue: FairQueue, job_id: str, tenant_id: str) -> None:
    """What workers.run_job reports when training dies of something not the user's doing."""
    record = EventRecord(
        job_id=job_id,
        tenant_id=tenant_id,
        type="status",
        level="error",
        message="training failed with an internal error (ActorUnavailableError: ...)",
        data={"status": "failed", "code": "training_failed", "retryable": True},
    )
    queue.r.xadd(EVENTS_STREAM, record.stream_fields())


def test_an_internal_failure_is_retried_when_ray_lost_the_job(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    sched, reconciler = loop_parts(app, queue, cluster)
    sched.tick()
    # The Ray head died under the run: the driver reports an internal failure, and the
    # restarted head knows nothing of the job.
    _internal_failure(queue, job_id, t.id)
    EventConsumer(app.state.engine, queue.r, "cp", "r").poll(block_ms=100)
    assert _job(client, t, job_id)["status"] == "running", "the event alone decides nothing"
    cluster.states[job_id] = "MISSING"
    reconciler.run_once()
    assert _job(client, t, job_id)["status"] == "queued"
    assert sched.tick() == [job_id]


def test_an_internal_failure_fails_the_job_once_ray_says_it_failed(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    sched, reconciler = loop_parts(app, queue, cluster)
    sched.tick()
    _internal_failure(queue, job_id, t.id)
    EventConsumer(app.state.engine, queue.r, "cp", "r").poll(block_ms=100)
    cluster.states[job_id] = "FAILED"
    reconciler.run_once()
    job = _job(client, t, job_id)
    assert job["status"] == "failed"
    assert "internal error" in job["error"]["message"]  # type: ignore[index]


def _publish_manifest(app: FastAPI, t: TenantHandle, job_id: str, tokens: int) -> str:
    """The job's model as its worker publishes it: weights, and a manifest beside them."""
    manifest = {"job_id": job_id, "metrics": {"trained_tokens": tokens}}
    folder = f"{t.id}/jobs/{job_id}/model"
    app.state.store.write_bytes(f"{folder}/adapter_model.safetensors", b"\0" * 64)
    app.state.store.write_bytes(f"{folder}/tuneplane.json", json.dumps(manifest).encode())
    return str(app.state.store.uri_for(folder))


def test_a_lost_result_is_recovered_on_the_first_pass_once_no_event_is_in_flight(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client, "drained")
    job_id = create_job_ok(client, t)["id"]
    sched, reconciler = loop_parts(app, queue, cluster)
    sched.tick()
    _publish_manifest(app, t, job_id, 321)
    EventConsumer(app.state.engine, queue.r, "control-plane", "r").poll(block_ms=100)
    cluster.states[job_id] = "SUCCEEDED"  # and Redis lost the result event
    reconciler.run_once()
    job = _job(client, t, job_id)
    assert job["status"] == "succeeded"
    assert job["trained_tokens"] == 321


def test_a_result_event_still_on_its_way_is_waited_for(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client, "inflight")
    job_id = create_job_ok(client, t)["id"]
    sched, reconciler = loop_parts(app, queue, cluster)
    sched.tick()
    consumer = EventConsumer(app.state.engine, queue.r, "control-plane", "r")
    consumer.ensure_group()
    model_uri = _publish_manifest(app, t, job_id, 321)
    result = EventRecord(
        job_id=job_id,
        tenant_id=t.id,
        type="result",
        data=ResultData(
            artifact_uri=model_uri, adapter="lora", trained_tokens=999, steps=1, metrics={}
        ).event_data(),
    )
    queue.r.xadd(EVENTS_STREAM, result.stream_fields())
    cluster.states[job_id] = "SUCCEEDED"
    reconciler.run_once()
    assert _job(client, t, job_id)["status"] == "running", "the event is not lost, only late"
    consumer.poll(block_ms=100)
    job = _job(client, t, job_id)
    assert (job["status"], job["trained_tokens"]) == ("succeeded", 999)


@dataclass
class SlowCluster(FixedCluster):
    """Ray taking its time to accept a submission (a head just restarted, say)."""

    accept: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)

    def submit(self, submission_id: str, entrypoint: str, env: dict[str, str]) -> None:
        self.arrived.set()
        assert self.accept.wait(30)
        super().submit(submission_id, entrypoint, env)


def test_a_slow_submission_is_not_taken_for_a_lost_job(
    client: TestClient, app: FastAPI, queue: FairQueue
) -> None:
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    cluster = SlowCluster()
    sched, reconciler = loop_parts(app, queue, cluster)  # dispatch grace 0
    ticking = threading.Thread(target=sched.tick)
    ticking.start()
    assert cluster.arrived.wait(30)
    reconciler.run_once()  # Ray does not list the job yet
    assert _job(client, t, job_id)["status"] == "running"
    cluster.accept.set()
    ticking.join(30)
    reconciler.run_once()
    assert _job(client, t, job_id)["status"] == "running"
    assert cluster.submitted == [job_id], "started once, on one submission id"

from __future__ import annotations

import time
from typing import Any

import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from service.jobs.state import transition
from service.models.status import JobStatus
from service.scheduling.events import EventConsumer, describe
from tests.factories import create_job_ok, make_tenant, publish_model, upload_ok
from workers.records import ResultData
from workers.report import EVENTS_STREAM, EventRecord, EventType


def _running_job(
    client: TestClient, app: FastAPI, **body: object
) -> tuple[str, str, dict[str, str]]:
    t = make_tenant(client, "evt")
    job = create_job_ok(client, t, suffix="s1", **body)
    with Session(app.state.engine) as s:
        assert transition(s, job["id"], JobStatus.RUNNING)
        s.commit()
    return job["id"], t.id, t.headers


def _result(artifact_uri: str) -> dict[str, Any]:
    """A result event's data as a worker sends it."""
    return ResultData(
        artifact_uri=artifact_uri, adapter="lora", trained_tokens=10, steps=1, metrics={}
    ).event_data()


def _emit(r: redis.Redis, job_id: str, tenant_id: str, type_: str, **kw: object) -> None:
    record = EventRecord(job_id=job_id, tenant_id=tenant_id, type=type_, **kw)
    r.xadd(EVENTS_STREAM, record.stream_fields())  # type: ignore[arg-type]


def test_worker_events_become_job_events_checkpoints_and_a_model(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    job_id, tenant_id, headers = _running_job(client, app)
    consumer = EventConsumer(app.state.engine, redis_client, "cp", "replica-1")
    _emit(redis_client, job_id, tenant_id, "metrics", data={"step": 1, "train_loss": 2.5})
    _emit(redis_client, job_id, tenant_id, "eval", data={"step": 2, "eval_loss": 2.0})
    _emit(
        redis_client,
        job_id,
        tenant_id,
        "checkpoint",
        data={"step": 2, "checkpoint_uri": "file:///c/2", "metrics": {"train_loss": 2.1}},
    )
    _emit(
        redis_client,
        job_id,
        tenant_id,
        "result",
        data=ResultData(
            artifact_uri=publish_model(app.state.store, tenant_id, job_id),
            adapter="lora",
            trained_tokens=1234,
            steps=2,
            metrics={"eval_loss": 2.0},
        ).event_data(),
    )
    assert consumer.poll(block_ms=100) == 4
    assert consumer.poll(block_ms=100) == 0

    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=headers).json()
    model_id = f"ft:tiny-gpt2:evt:s1:{job_id}"
    assert job["status"] == "succeeded"
    assert job["fine_tuned_model"] == model_id
    assert job["trained_tokens"] == 1234
    assert job["finished_at"] is not None
    # The final metrics stay on the job itself, not only in an event.
    assert job["result"] == {"metrics": {"eval_loss": 2.0}}
    events = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}, headers=headers
    ).json()["data"]
    messages = [e["message"] for e in events]
    assert "Step 1: training loss=2.5000" in messages
    assert "Step 2: validation loss=2.0000" in messages
    metrics = [e for e in events if e["type"] == "metrics"]
    assert {e["data"]["kind"] for e in metrics} == {"metrics", "eval"}
    ckpts = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=headers).json()["data"]
    assert [c["step_number"] for c in ckpts] == [2]
    assert ckpts[0]["fine_tuned_model_checkpoint"] == f"{model_id}:ckpt-step-2"
    models = client.get("/v1/models", headers=headers).json()["data"]
    assert model_id in {m["id"] for m in models}


def test_an_unacknowledged_entry_is_stored_once_when_redelivered(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    job_id, tenant_id, headers = _running_job(client, app)
    consumer = EventConsumer(app.state.engine, redis_client, "cp", "dead", reclaim_idle_ms=50)
    consumer.ensure_group()
    _emit(redis_client, job_id, tenant_id, "metrics", data={"step": 1, "train_loss": 1.0})
    # A replica reads the entry, stores it, and dies before XACK.
    reply: Any = redis_client.xreadgroup("cp", "dead", {EVENTS_STREAM: ">"}, count=10)
    entry_id, fields = reply[0][1][0]
    with Session(app.state.engine) as s:
        consumer.apply(s, entry_id, EventRecord.from_stream_fields(fields))
        s.commit()
    time.sleep(0.1)
    survivor = EventConsumer(app.state.engine, redis_client, "cp", "alive", reclaim_idle_ms=50)
    assert survivor.poll(block_ms=100) == 1  # reclaimed from the dead consumer
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=headers).json()["data"]
    assert [e["message"] for e in events].count("Step 1: training loss=1.0000") == 1
    assert redis_client.xpending(EVENTS_STREAM, "cp")["pending"] == 0


def test_stored_entries_leave_the_stream(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    """Redis holds only what is still to be stored: a soak's stream does not grow with
    every event ever sent."""
    job_id, tenant_id, _ = _running_job(client, app)
    consumer = EventConsumer(app.state.engine, redis_client, "cp", "replica-1")
    consumer.ensure_group()
    for step in range(1, 51):
        _emit(redis_client, job_id, tenant_id, "metrics", data={"step": step, "train_loss": 1.0})
    assert redis_client.xlen(EVENTS_STREAM) == 50
    while consumer.poll(block_ms=100, count=20):
        pass
    assert redis_client.xlen(EVENTS_STREAM) == 0
    assert redis_client.xpending(EVENTS_STREAM, "cp")["pending"] == 0


def test_a_failure_event_fails_the_job_with_the_workers_message(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    job_id, tenant_id, headers = _running_job(client, app)
    _emit(
        redis_client,
        job_id,
        tenant_id,
        "status",
        level="error",
        message="max_length 8 is shorter than every example; raise max_length",
        data={"status": "failed"},
    )
    EventConsumer(app.state.engine, redis_client, "cp", "r").poll(block_ms=100)
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "training_failed"
    assert "raise max_length" in job["error"]["message"]


def test_events_naming_the_wrong_tenant_are_dropped(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    job_id, _, headers = _running_job(client, app)
    _emit(redis_client, job_id, "tenant-other", "result", data={"artifact_uri": "file:///x"})
    EventConsumer(app.state.engine, redis_client, "cp", "r").poll(block_ms=100)
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=headers).json()["status"] == "running"
    )


def test_consumer_recovers_when_redis_loses_its_data(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    job_id, tenant_id, _ = _running_job(client, app)
    consumer = EventConsumer(app.state.engine, redis_client, "cp", "r")
    consumer.poll(block_ms=50)
    redis_client.flushall()
    assert consumer.poll(block_ms=50) == 0  # NOGROUP: noticed, group recreated next time
    _emit(redis_client, job_id, tenant_id, "metrics", data={"step": 5, "train_loss": 0.5})
    assert consumer.poll(block_ms=100) == 1


def test_trial_events_become_trials_and_the_winner_is_named(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    search = {
        "space": {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        "num_trials": 2,
    }
    t = make_tenant(client, "tune")
    train = upload_ok(client, t)
    job = create_job_ok(client, t, training_file=train, validation_file=train, search=search)
    job_id, headers = job["id"], t.headers
    with Session(app.state.engine) as s:
        assert transition(s, job_id, JobStatus.RUNNING)
        s.commit()
    params = {"a": {"learning_rate": 1e-3}, "b": {"learning_rate": 5e-3}}
    updates = [
        ("a", "running", 3.0),
        ("b", "running", 3.1),
        ("a", "terminated", 2.0),
        ("b", "early_stopped", 2.9),
    ]
    for tid, status, loss in updates:
        _emit(
            redis_client,
            job_id,
            t.id,
            "trial",
            data={"trial_id": tid, "status": status, "params": params[tid],
                  "metrics": {"eval_loss": loss}, "best_metric": loss, "iterations": 2},
        )  # fmt: skip
    _emit(
        redis_client, job_id, t.id, "metrics", data={"trial_id": "a", "step": 1, "train_loss": 2.5}
    )
    best = {"trial_id": "a", "metric": "eval_loss", "value": 2.0, "params": params["a"]}
    _emit(
        redis_client,
        job_id,
        t.id,
        "result",
        data={**_result(publish_model(app.state.store, t.id, job_id)), "best_trial": best},
    )
    EventConsumer(app.state.engine, redis_client, "cp", "r").poll(block_ms=100)

    trials = client.get(f"/v1/fine_tuning/jobs/{job_id}/trials", headers=headers).json()["data"]
    assert [(x["trial_id"], x["status"], x["best_metric"]) for x in trials] == [
        ("a", "terminated", 2.0),
        ("b", "early_stopped", 2.9),
    ]
    assert trials[0]["params"] == {"learning_rate": 1e-3}
    got = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=headers).json()
    assert got["status"] == "succeeded"
    assert got["search_result"] == best
    events = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 50}, headers=headers
    )
    assert any(e["data"].get("trial_id") == "a" for e in events.json()["data"] if e["data"])
    other = make_tenant(client)
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job_id}/trials", headers=other.headers).status_code
        == 404
    )


def test_a_record_sent_twice_is_stored_once(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    job_id, tenant_id, headers = _running_job(client, app)
    record = EventRecord(
        job_id=job_id, tenant_id=tenant_id, type="metrics", data={"step": 1, "train_loss": 1.0}
    )
    # The worker resent it: Redis had taken the first XADD, but its reply was lost.
    redis_client.xadd(EVENTS_STREAM, record.stream_fields())  # type: ignore[arg-type]
    redis_client.xadd(EVENTS_STREAM, record.stream_fields())  # type: ignore[arg-type]
    assert EventConsumer(app.state.engine, redis_client, "cp", "r").poll(block_ms=100) == 2
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", headers=headers).json()["data"]
    assert [e["message"] for e in events].count("Step 1: training loss=1.0000") == 1


def _message(type_: EventType, **data: object) -> str:
    """The message stored for a worker event of this type and data."""
    return describe(EventRecord(job_id="ftjob-x", tenant_id="t", type=type_, data=data))


def test_steps_and_passes_say_their_accuracy_or_reward_accuracy_beside_the_loss() -> None:
    # DPO: reward accuracy and margin after the (DPO) loss; not the raw rewards.
    dpo_step = _message(
        "metrics",
        step=3,
        train_loss=0.6931,
        train_reward_accuracy=0.5,
        train_reward_margin=0.0,
        train_chosen_reward=0.0,
        train_rejected_reward=0.0,
        learning_rate=1e-4,
    )
    assert dpo_step == (
        "Step 3: training loss=0.6931, reward accuracy=0.5000, reward margin=0.0000, "
        "learning rate=1.00e-04"
    )
    dpo_pass = _message(
        "eval", step=4, eval_loss=0.5, eval_reward_accuracy=0.75, eval_reward_margin=1.25
    )
    assert (
        dpo_pass == "Step 4: validation loss=0.5000, reward accuracy=0.7500, reward margin=1.2500"
    )
    # A classifier: accuracy, now for its steps too.
    assert _message("metrics", step=1, train_loss=0.5, train_accuracy=1.0) == (
        "Step 1: training loss=0.5000, accuracy=1.0000"
    )
    assert _message("eval", step=2, eval_loss=0.25, eval_accuracy=0.75) == (
        "Step 2: validation loss=0.2500, accuracy=0.7500"
    )
    # A language model's: the loss alone.
    assert _message("metrics", step=1, train_loss=2.5) == "Step 1: training loss=2.5000"
    assert _message("eval", step=2, eval_loss=2.0) == "Step 2: validation loss=2.0000"

"""A job's checkpoints as the control plane records them: retention (rows, files, events)
and each kept checkpoint as a model (GET /v1/models/{id}, inference, deployments), on both
databases, without Ray: checkpoints are written to disk here and reported as the event
consumer reports them. The served path is in tests/service/serving/test_serving.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.db import new_session
from service.deployments.serving import route_of
from service.jobs.lifecycle import JobLifecycle
from service.jobs.retention import RETENTION_MARKER
from service.registry.repository import ModelRepository
from tests.factories import TenantHandle, create_job_ok, make_tenant
from workers.records import CheckpointData
from workers.spec import JobSpec
from workers.storage import checkpoint_uri, run_storage_uri

CHAT = [{"role": "user", "content": "hi"}]


def _report(engine: Engine, job_id: str, step: int, train_loss: float) -> Path:
    """Writes a checkpoint's directory as a run does and records it as the consumer does."""
    with new_session(engine) as s:
        jobs = JobLifecycle(s)
        job = jobs.job(job_id)
        assert job is not None and job.spec is not None
        run = run_storage_uri(JobSpec.model_validate(job.spec, strict=False).output_uri)
        uri = checkpoint_uri(run, f"checkpoint-{step:07d}")
        directory = Path(fsspec.core.url_to_fs(uri)[1])
        (directory / "model").mkdir(parents=True)
        (directory / "model" / "adapter_model.safetensors").write_bytes(b"w" * 64)
        (directory / "optimizer.safetensors").write_bytes(b"o" * 64)
        data = CheckpointData(step=step, checkpoint_uri=uri, metrics={"train_loss": train_loss})
        jobs.checkpoint(job, data, at=1000.0 + step)
        s.commit()
    return directory


def _steps(client: TestClient, tenant: TenantHandle, job_id: str) -> list[int]:
    r = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return [c["step_number"] for c in r.json()["data"]]


def _chat(client: TestClient, tenant: TenantHandle, model: str) -> Any:
    body = {"model": model, "messages": CHAT}
    return client.post("/v1/chat/completions", json=body, headers=tenant.headers)


def _error(r: Any) -> tuple[int, str, str]:
    error = r.json()["error"]
    return r.status_code, error["code"], error["param"]


def test_retention_keeps_the_last_k_and_the_best_and_kept_ones_are_models(
    client: TestClient,
) -> None:
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    a, b = make_tenant(client, "ckpt-a"), make_tenant(client, "ckpt-b")
    job = create_job_ok(client, a, suffix="s", hyperparameters={"num_checkpoints_to_keep": 2})
    losses = {1: 3.0, 2: 1.0, 3: 2.5, 4: 2.0, 5: 1.8}
    dirs = {step: _report(engine, job["id"], step, loss) for step, loss in losses.items()}

    # The last 2 (4, 5) and the lowest training loss (2); 1 and 3 emptied on disk.
    assert _steps(client, a, job["id"]) == [5, 4, 2]
    for step, directory in dirs.items():
        names = sorted(p.name for p in directory.iterdir())
        expected = [RETENTION_MARKER] if step in (1, 3) else ["model", "optimizer.safetensors"]
        assert names == expected, (step, names)
    events = client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 50}, headers=a.headers
    ).json()["data"]
    removed = sorted(
        e["data"]["step"] for e in events if e["data"].get("kind") == "checkpoint_removed"
    )
    assert sorted(removed) == [1, 3]

    model = f"ft:tiny-gpt2:ckpt-a:s:{job['id']}"
    kept, gone = f"{model}:ckpt-step-2", f"{model}:ckpt-step-1"
    shown = client.get(f"/v1/models/{kept}", headers=a.headers)
    assert shown.status_code == 200, shown.text
    assert (shown.json()["id"], shown.json()["object"], shown.json()["owned_by"]) == (
        kept,
        "model",
        a.id,
    )
    assert shown.json()["fine_tuning_job"] == job["id"]
    listed = {m["id"] for m in client.get("/v1/models", headers=a.headers).json()["data"]}
    assert kept not in listed, "checkpoints are not listed, as on OpenAI"

    # Another tenant: a plain 404, as for any model of someone else's.
    assert client.get(f"/v1/models/{kept}", headers=b.headers).status_code == 404
    r = client.post(
        "/v1/chat/completions", json={"model": kept, "messages": CHAT}, headers=b.headers
    )
    assert _error(r) == (404, "model_not_found", "model")
    r = client.post("/v1/deployments", json={"model": kept}, headers=b.headers)
    assert _error(r) == (404, "model_not_found", "model")
    # Removed by retention: a 404 that says so, wherever the id is used.
    for r in (
        client.get(f"/v1/models/{gone}", headers=a.headers),
        client.post(
            "/v1/chat/completions", json={"model": gone, "messages": CHAT}, headers=a.headers
        ),
        client.post("/v1/completions", json={"model": gone, "prompt": "x"}, headers=a.headers),
        client.post("/v1/deployments", json={"model": gone}, headers=a.headers),
    ):
        assert _error(r) == (404, "checkpoint_removed", "model"), r.text
        assert "retention" in r.json()["error"]["message"]
    # A step that never existed is just unknown; a wrong prefix on a kept step too.
    for unknown in (f"{model}:ckpt-step-9", f"ft:tiny-gpt2:ckpt-a:other:{job['id']}:ckpt-step-2"):
        r = client.get(f"/v1/models/{unknown}", headers=a.headers)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")

    # The kept checkpoint resolves as a model of its job's task: a causal LM is no
    # classifier, and chat reaches serving (none here: 503, not 404).
    r = client.post("/v1/classifications", json={"model": kept, "input": "x"}, headers=a.headers)
    assert _error(r) == (400, "wrong_model_task", "model")
    r = client.post(
        "/v1/chat/completions", json={"model": kept, "messages": CHAT}, headers=a.headers
    )
    assert r.status_code == 503, r.text
    r = client.delete(f"/v1/models/{kept}", headers=a.headers)
    assert _error(r) == (400, "checkpoint_not_deletable", "model")

    # Deployable like a fine-tuned model; a deployed checkpoint outlives retention, and its
    # policy reaches Serve's config for the application that serves it.
    r = client.post(
        "/v1/deployments",
        json={"model": f"{model}:ckpt-step-4", "min_replicas": 1, "max_replicas": 2},
        headers=a.headers,
    )
    assert r.status_code == 200, r.text
    _report(engine, job["id"], 6, 1.9)
    assert _steps(client, a, job["id"]) == [6, 5, 4, 2]
    _report(engine, job["id"], 7, 1.7)
    assert _steps(client, a, job["id"]) == [7, 6, 4, 2]
    with new_session(engine) as s:
        found = ModelRepository(s, a.id).servable_with_job(f"{model}:ckpt-step-4")
        assert found is not None
        route = route_of(*found)[0]
    assert route.multiplexed_id == f"{dirs[4].as_uri()}/model"
    apps = {app["name"]: app for app in client.app.state.serving.desired()["applications"]}  # type: ignore[attr-defined]
    scaling = apps[route.app]["deployments"][0]["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 2)

"""Deleting a fine-tuned model removes its weights from the artifact store (a soak's
deleted models held their bytes for ever), unless something still needs them: a job
continuing from it, or a live model built on a full model's weights (409 model_in_use).
Weights outside the store are never touched."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from service.common import now
from service.jobs.lifecycle import JobLifecycle
from service.jobs.state import transition
from service.models import FineTunedModel
from service.models.status import JobStatus
from service.storage import ArtifactStore
from tests.factories import TenantHandle, create_job_ok, make_tenant


def _model(
    client: TestClient, app: FastAPI, t: TenantHandle, adapter: str = "lora", **body: object
) -> tuple[str, Path]:
    """A succeeded job's model with weights in the store: (model id, its folder)."""
    job = create_job_ok(client, t, **body)
    store: ArtifactStore = app.state.store
    key = f"{t.id}/jobs/{job['id']}/model"
    store.write_bytes(f"{key}/adapter_model.safetensors", b"w" * 1000)
    store.write_bytes(f"{t.id}/jobs/{job['id']}/checkpoints/step-2/model/weights.bin", b"c")
    model_id = f"ft:{job['model']}:{t.name}::{job['id']}"
    with Session(app.state.engine) as s:
        row = JobLifecycle(s).job(job["id"])
        assert row is not None
        model = FineTunedModel.of_job(
            row, id=model_id, artifact_uri=store.uri_for(key), created_at=now()
        )
        model.adapter_type = adapter
        s.add(model)
        assert transition(s, job["id"], JobStatus.RUNNING)
        assert transition(s, job["id"], JobStatus.SUCCEEDED)
        s.commit()
    return model_id, Path(store.root) / key


def test_a_deleted_models_weights_leave_the_store_and_its_checkpoints_stay(
    client: TestClient, app: FastAPI
) -> None:
    t = make_tenant(client)
    model_id, folder = _model(client, app, t)
    assert (folder / "adapter_model.safetensors").exists()
    r = client.delete(f"/v1/models/{model_id}", headers=t.headers)
    assert r.status_code == 200, r.text
    assert not folder.exists()
    # The job's checkpoints are models of their own, kept by retention.
    assert (folder.parent / "checkpoints/step-2/model/weights.bin").exists()


def test_weights_in_use_are_kept_and_the_delete_refused_until_nothing_needs_them(
    client: TestClient, app: FastAPI
) -> None:
    t = make_tenant(client)
    parent, folder = _model(client, app, t)
    child = create_job_ok(client, t, model=parent)
    r = client.delete(f"/v1/models/{parent}", headers=t.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "model_in_use"), r.text
    assert child["id"] in r.json()["error"]["message"]
    assert folder.exists()
    assert client.post(f"/v1/fine_tuning/jobs/{child['id']}/cancel", headers=t.headers).is_success
    with Session(app.state.engine) as s:
        # Cancelling ends once the run is gone; with no run, at once.
        transition(s, child["id"], JobStatus.CANCELLED)
        s.commit()
    assert client.delete(f"/v1/models/{parent}", headers=t.headers).status_code == 200
    assert not folder.exists()


def test_a_full_models_weights_stay_while_a_live_model_is_built_on_them(
    client: TestClient, app: FastAPI
) -> None:
    t = make_tenant(client)
    full, folder = _model(client, app, t, adapter="full")
    # A LoRA fine-tune of the full model trains on its folder, and is served on it.
    child, _ = _model(client, app, t, model=full)
    r = client.delete(f"/v1/models/{full}", headers=t.headers)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "model_in_use"), r.text
    assert child in r.json()["error"]["message"]
    assert client.delete(f"/v1/models/{child}", headers=t.headers).status_code == 200
    assert client.delete(f"/v1/models/{full}", headers=t.headers).status_code == 200
    assert not folder.exists()


def test_weights_outside_the_store_are_left_alone(
    client: TestClient, app: FastAPI, tmp_path: Path
) -> None:
    t = make_tenant(client)
    model_id, _ = _model(client, app, t)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "adapter_model.safetensors").write_bytes(b"x")
    with Session(app.state.engine) as s:
        row = s.get(FineTunedModel, model_id)
        assert row is not None
        row.artifact_uri = outside.as_uri()
        s.add(row)
        s.commit()
    assert client.delete(f"/v1/models/{model_id}", headers=t.headers).status_code == 200
    assert (outside / "adapter_model.safetensors").exists()

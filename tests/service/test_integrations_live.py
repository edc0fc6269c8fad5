"""A real job with experiment trackers, end to end on the session's Ray cluster: a real
`mlflow server`, W&B in offline mode and an MLflow server that is down, in one job (each
real job costs ~20 s). The tenant's tracker secrets reach the worker and nowhere else."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ray.job_submission import JobSubmissionClient
from sqlmodel import Session

from service.config import Settings
from service.main import create_app
from service.models import Job
from service.ray_backend import submission_id
from service.stack import free_port
from tests.factories import TenantHandle, jsonl, make_tenant, prompt_completion_records
from tests.fixtures.stack import wait_for
from tests.workers.tracking_servers import (
    MlflowServer,
    mlflow_server,
    params_of,
    tags_of,
    wandb_run,
)
from workers.trackers import TRACKER_SECRETS_FILE

__all__ = ["mlflow_server"]

pytestmark = pytest.mark.ray

TOKEN = "mlflow-token-5d2f8a7c91"
WANDB_KEY = "0123456789abcdef" * 2 + "fedcba98"  # 40 characters, as W&B's keys are
SECRETS = (TOKEN, WANDB_KEY)
TERMINAL = ("succeeded", "failed", "cancelled")
STEPS = 6  # 24 examples, batch 4, one epoch


@pytest.fixture
def refusing_tracker() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server that refuses every request as unauthorized (a tracker given a wrong
    token), keeping the Authorization headers it was sent."""
    seen: list[str] = []

    class Refuse(BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            body = b'{"error_code": "UNAUTHENTICATED", "message": "bad token"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _refuse

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _events(http: TestClient, t: TenantHandle, job_id: str) -> tuple[str, list[dict[str, Any]]]:
    r = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}, headers=t.headers)
    assert r.status_code == 200 and not r.json()["has_more"], r.text
    return r.text, list(r.json()["data"])


def test_a_tracked_job_logs_to_its_trackers_and_its_secrets_stay_hidden(
    stack_settings: Settings,
    mlflow_server: MlflowServer,
    refusing_tracker: tuple[str, list[str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    closed = f"http://127.0.0.1:{free_port()}"
    refusing, authorizations = refusing_tracker
    env = {**stack_settings.worker_env, "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir)}
    settings = stack_settings.model_copy(update={"worker_env": env})
    with TestClient(create_app(settings)) as http:
        t = make_tenant(http)
        for name, value in (("MLFLOW_TRACKING_TOKEN", TOKEN), ("WANDB_API_KEY", WANDB_KEY)):
            r = http.put(f"/v1/secrets/{name}", json={"value": value}, headers=t.headers)
            assert r.status_code == 200, r.text
        up = http.post(
            "/v1/files",
            files={"file": ("t.jsonl", jsonl(prompt_completion_records(24)), "application/jsonl")},
            data={"purpose": "fine-tune"},
            headers=t.headers,
        )
        file_id = up.json()["id"]
        integrations = [
            {"type": "mlflow", "mlflow": {"tracking_uri": mlflow_server.url, "experiment": "live"}},
            {"type": "mlflow", "mlflow": {"tracking_uri": closed}},
            {"type": "mlflow", "mlflow": {"tracking_uri": refusing, "experiment": "x"}},
            {"type": "wandb", "wandb": {"project": "tuneplane-live", "tags": ["live"]}},
        ]
        r = http.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "tiny-gpt2",
                "training_file": file_id,
                "validation_file": file_id,
                "suffix": "tracked",
                "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate": 0.001},
                "integrations": integrations,
            },
            headers=t.headers,
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        wait_for(
            lambda: (
                http.get(f"/v1/fine_tuning/jobs/{job_id}", headers=t.headers).json()["status"]
                in TERMINAL
            ),
            240,
            f"job {job_id} to end",
            1.0,
        )
        job_text = http.get(f"/v1/fine_tuning/jobs/{job_id}", headers=t.headers).text
        job = json.loads(job_text)
        events_text, events = _events(http, t, job_id)
        assert job["status"] == "succeeded", (job, events[:5])
        model_id = job["fine_tuned_model"]
        assert model_id == f"ft:tiny-gpt2:{t.name}:tracked:{job_id}"

        # The tracker that is down and the one that refuses the token: a warning each, and
        # the job went on.
        warnings = [e for e in events if e["level"] == "warn" and "unavailable" in e["message"]]
        assert len(warnings) == 2, warnings
        assert sorted(w["message"].split(" unavailable")[0] for w in warnings) == sorted(
            [f"MLflow tracking at {closed}", f"MLflow tracking at {refusing}"]
        )
        # The refusing one was sent the tenant's token: the secret reached the worker.
        assert authorizations == [f"Bearer {TOKEN}"]

        with Session(http.app.state.engine) as s:  # type: ignore[attr-defined]
            row = s.get(Job, job_id)
            assert row is not None
            stored = json.dumps(row.model_dump(), default=str)
        artifacts = Path(settings.data_dir) / "artifacts" / t.id / "jobs" / job_id

    # MLflow: the resolved hyperparameters, the curves by step, the model.
    (run,) = mlflow_server.runs("live")
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["run_name"] == job_id
    params = params_of(run)
    assert params["learning_rate"] == "0.001"
    assert (params["n_epochs"], params["batch_size"]) == ("1", "4")
    assert (params["adapter"], params["method"]) == ("lora", "supervised")
    tags = tags_of(run)
    assert tags["fine_tuned_model"] == model_id
    assert tags["artifact_uri"].endswith(f"/{t.id}/jobs/{job_id}/model")
    run_id = run["info"]["run_id"]
    assert [s for s, _ in mlflow_server.history(run_id, "train_loss")] == list(range(1, STEPS + 1))
    assert [s for s, _ in mlflow_server.history(run_id, "learning_rate")] == list(
        range(1, STEPS + 1)
    )
    assert [s for s, _ in mlflow_server.history(run_id, "eval_loss")] == [STEPS]
    assert mlflow_server.history(run_id, "trained_tokens")[-1][1] == job["trained_tokens"]

    # W&B, offline: the same, in its run file.
    wb = wandb_run(wandb_dir, job_id)
    assert wb.project == "tuneplane-live" and wb.tags == ["live"]
    assert wb.config["learning_rate"] == 0.001 and wb.config["batch_size"] == 4
    assert [row["_step"] for row in wb.history if "train_loss" in row] == list(range(1, STEPS + 1))
    assert any("eval_loss" in row for row in wb.history)
    assert wb.summary["fine_tuned_model"] == model_id

    # The secrets: used by the worker, shown nowhere.
    assert not (artifacts / TRACKER_SECRETS_FILE).exists(), "the driver removes them once read"
    ray_jobs = JobSubmissionClient(settings.ray_address)
    info = ray_jobs.get_job_info(submission_id(job_id, 1))
    ray_logs = ray_jobs.get_job_logs(submission_id(job_id, 1))
    worker_files = b"".join(
        p.read_bytes() for p in [*artifacts.rglob("*"), *wb.directory.rglob("*")] if p.is_file()
    )
    for secret in SECRETS:
        assert secret not in job_text
        assert secret not in events_text
        assert secret not in stored
        assert secret not in json.dumps(info.__dict__, default=str)
        assert secret not in ray_logs
        assert secret not in caplog.text
        assert secret not in json.dumps(run)
        assert secret.encode() not in worker_files

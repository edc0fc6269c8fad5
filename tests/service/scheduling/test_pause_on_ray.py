"""Pause and resume of real runs: API -> Redis -> Ray Train and back, driven by the
official `openai` client. (That a resumed run's losses equal an uninterrupted run's is
tests/workers/test_pause.py's, on the same recipe.)"""

from __future__ import annotations

from typing import Any

import openai
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from service.ray_backend import RayJobsBackend, submission_id
from tests.factories import TenantHandle, jsonl, make_tenant, prompt_completion_records
from tests.fixtures.stack import wait_for


def _events(http: Any, t: TenantHandle, job_id: str) -> list[dict[str, Any]]:
    r = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}, headers=t.headers)
    return list(reversed(r.json()["data"]))  # oldest first


def _steps(events: list[dict[str, Any]]) -> list[int]:
    return [
        e["data"]["step"]
        for e in events
        if e["type"] == "metrics" and e["data"].get("kind") == "metrics"
    ]


def test_pause_a_running_job_and_resume_it_where_it_stopped(stack_settings: Settings) -> None:
    with TestClient(create_app(stack_settings)) as http:
        t = make_tenant(http)
        sdk = openai.OpenAI(
            api_key=t.key, base_url="http://testserver/v1", http_client=http, max_retries=0
        )
        train = sdk.files.create(
            file=("t.jsonl", jsonl(prompt_completion_records(24))), purpose="fine-tune"
        )
        job = sdk.fine_tuning.jobs.create(
            model="tiny-gpt2",
            training_file=train.id,
            hyperparameters={"n_epochs": 4, "batch_size": 2},
        )
        wait_for(lambda: len(_steps(_events(http, t, job.id))) >= 2, 180, "training steps")
        paused = sdk.fine_tuning.jobs.pause(job.id)
        assert paused.status == "running"  # until the run has saved and stopped
        wait_for(lambda: sdk.fine_tuning.jobs.retrieve(job.id).status == "paused", 120, "the pause")
        events = _events(http, t, job.id)
        note = next(e for e in events if e["message"].startswith("Job paused at step"))
        at = note["data"]["step"]
        steps = _steps(events)
        assert steps == list(range(1, at + 1)), "it stopped right after the step it paused at"
        backend = RayJobsBackend(stack_settings.ray_address or "")
        assert backend.state(submission_id(job.id, 1)) == "SUCCEEDED", "its Ray job ended"
        ckpts = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
        assert at in {c.step_number for c in ckpts}, "the pause saved a checkpoint"

        resumed = sdk.fine_tuning.jobs.resume(job.id)
        assert resumed.status == "queued"
        wait_for(
            lambda: sdk.fine_tuning.jobs.retrieve(job.id).status in ("succeeded", "failed"),
            180,
            "the resumed job to finish",
        )
        done = sdk.fine_tuning.jobs.retrieve(job.id)
        events = _events(http, t, job.id)
        assert done.status == "succeeded", [e["message"] for e in events][-8:]
        total = 4 * 24 // 2
        assert _steps(events) == list(range(1, total + 1)), "every step ran once, in order"
        said = [e["message"] for e in events]
        assert f"resumed from the checkpoint at step {at}" in said
        assert sum(m.startswith("Job started on the cluster") for m in said) == 2
        # Success is recorded from the run's result event; its driver exits just after.
        wait_for(lambda: backend.state(submission_id(job.id, 2)) == "SUCCEEDED", 30, "the driver")

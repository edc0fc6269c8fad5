from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from service.common import now
from service.jobs.auto import auto_batch_size, auto_epochs, auto_learning_rate
from service.jobs.state import add_event, transition
from service.models import Checkpoint
from service.models.status import JobStatus
from tests.factories import (
    ADMIN,
    TenantHandle,
    chat_records,
    classification_records,
    create_job,
    create_job_ok,
    jsonl,
    make_tenant,
    upload_ok,
)


def test_create_job_is_queued_in_openai_shape(client: TestClient) -> None:
    t = make_tenant(client, "shape")
    train = upload_ok(client, t)
    valid = upload_ok(client, t)
    job = create_job_ok(
        client,
        t,
        training_file=train,
        validation_file=valid,
        suffix="my-model",
        seed=7,
        metadata={"team": "search"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        adapter={"type": "lora", "r": 4},
        resources={"num_workers": 2},
        priority=5,
    )
    assert job["object"] == "fine_tuning.job"
    assert job["id"].startswith("ftjob-")
    assert job["status"] == "queued"
    assert job["model"] == "tiny-gpt2"
    assert job["training_file"] == train
    assert job["validation_file"] == valid
    assert job["organization_id"] == t.id
    assert job["seed"] == 7
    assert job["user_provided_suffix"] == "my-model"
    assert job["metadata"] == {"team": "search"}
    assert job["hyperparameters"]["n_epochs"] == 2
    assert job["hyperparameters"]["batch_size"] == 4  # "auto": 4 at least, capped at the examples
    assert job["method"]["type"] == "supervised"
    assert job["adapter"]["r"] == 4
    assert job["resources"]["num_workers"] == 2
    assert job["priority"] == 5
    assert job["fine_tuned_model"] is None
    assert job["error"] is None
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=t.headers).json() == job
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=t.headers).json()
    assert [e["message"] for e in events["data"]] == [
        f"Validated training file {train} and validation file {valid}; job queued",
    ]
    assert events["data"][0]["object"] == "fine_tuning.job.event"


def test_legacy_hyperparameters_and_learning_rate_multiplier(client: TestClient) -> None:
    t = make_tenant(client)
    job = create_job_ok(
        client, t, hyperparameters={"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 2}
    )
    hp = job["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"]) == (1, 2, 2)
    base = create_job_ok(client, t)["hyperparameters"]["learning_rate"]
    assert hp["learning_rate"] == pytest.approx(2 * base)


def test_auto_hyperparameters_follow_the_data_size() -> None:
    # OpenAI's epoch rule: about 100 examples seen at least, 25,000 at most, 3 between.
    assert [auto_epochs(n) for n in (4, 10, 34, 64, 8000, 20000)] == [25, 10, 3, 3, 3, 1]
    # About a step per 16 examples an epoch, a power of two within 4..32.
    assert [auto_batch_size(n) for n in (4, 64, 100, 500, 2000)] == [4, 4, 8, 32, 32]
    assert auto_learning_rate(1e-3, 4) == pytest.approx(1e-3)
    assert auto_learning_rate(1e-3, 16) == pytest.approx(2e-3)
    assert auto_learning_rate(1e-3, 32) == pytest.approx(2e-3)


def test_auto_hyperparameters_on_a_job_and_an_absolute_learning_rate(
    client: TestClient,
) -> None:
    t = make_tenant(client)
    train = upload_ok(client, t, jsonl(chat_records(64)))
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    hp = create_job_ok(client, t, training_file=train, hyperparameters=auto)["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"]) == (3, 4, 1.0)
    # An absolute rate is not also shown as a multiplier of 1.0.
    hp = create_job_ok(client, t, training_file=train, hyperparameters={"learning_rate": 1e-4})[
        "hyperparameters"
    ]
    assert hp["learning_rate"] == 1e-4 and "learning_rate_multiplier" not in hp
    # The step-0 evaluation is off unless asked for.
    assert hp["eval_at_start"] is False


def test_cpus_are_left_to_the_scheduler_unless_given_and_cpu_jobs_show_no_gpus(
    client: TestClient,
) -> None:
    t = make_tenant(client)
    auto = create_job_ok(client, t)["resources"]
    assert auto == {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1.0, "auto_cpus": True}
    fixed = create_job_ok(client, t, resources={"cpus_per_worker": 3})["resources"]
    assert (fixed["cpus_per_worker"], fixed["auto_cpus"]) == (3.0, False)
    gpu = create_job_ok(client, t, resources={"use_gpu": True, "cpus_per_worker": "auto"})
    assert gpu["resources"]["gpus_per_worker"] == 1.0 and gpu["resources"]["auto_cpus"]


def test_classification_job_on_tiny_bert(client: TestClient) -> None:
    t = make_tenant(client)
    file_id = upload_ok(client, t, jsonl(classification_records(6)))
    job = create_job_ok(client, t, model="tiny-bert", training_file=file_id)
    assert job["task"] == "sequence_classification"


def _other_tenant_file(client: TestClient, _: TenantHandle) -> dict[str, Any]:
    other = make_tenant(client)
    return {"training_file": upload_ok(client, other)}


def _classification_file(client: TestClient, t: TenantHandle) -> dict[str, Any]:
    return {"training_file": upload_ok(client, t, jsonl(classification_records(4)))}


BAD_SPECS: list[tuple[str, Any, str]] = [
    ("unknown_model", {"model": "gpt-9"}, "model"),
    ("unknown_file", {"training_file": "file-nope"}, "training_file"),
    ("other_tenants_file", _other_tenant_file, "training_file"),
    ("missing_training_file", {"training_file": None}, "training_file"),
    ("task_file_mismatch", _classification_file, "training_file"),
    ("unknown_validation_file", {"validation_file": "file-nope"}, "validation_file"),
    ("task_model_mismatch", {"task": "sequence_classification"}, "task"),
    ("negative_epochs", {"hyperparameters": {"n_epochs": -1}}, "hyperparameters.n_epochs"),
    (
        "zero_batch_in_method",
        {"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 0}}}},
        "method.supervised.hyperparameters.batch_size",
    ),
    (
        "huge_lr_multiplier",
        {"hyperparameters": {"learning_rate_multiplier": 1e9}},
        "hyperparameters.learning_rate_multiplier",
    ),
    (
        "lr_and_multiplier",
        {"hyperparameters": {"learning_rate": 1e-4, "learning_rate_multiplier": 2}},
        "hyperparameters.learning_rate",
    ),
    ("unsupported_method", {"method": {"type": "reinforcement"}}, "method.type"),
    (
        "method_and_legacy",
        {
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
            "hyperparameters": {"n_epochs": 1},
        },
        "hyperparameters",
    ),
    ("lora_rank_zero", {"adapter": {"type": "lora", "r": 0}}, "adapter.r"),
    ("unknown_adapter", {"adapter": {"type": "dora"}}, "adapter"),
    ("qlora_rank_zero", {"adapter": {"type": "qlora", "r": 0}}, "adapter.r"),
    ("too_many_workers", {"resources": {"num_workers": 10_000}}, "resources.num_workers"),
    ("workers_over_service_max", {"resources": {"num_workers": 65}}, "resources.num_workers"),
    ("bad_suffix", {"suffix": "has:colon"}, "suffix"),
    ("negative_seed", {"seed": -3}, "seed"),
    ("non_string_metadata", {"metadata": {"k": 3}}, "metadata.k"),
    ("unknown_field", {"colour": "blue"}, "colour"),
    ("priority_out_of_range", {"priority": 1000}, "priority"),
    (
        "search_unknown_param",
        {"search": {"space": {"optimizer": {"type": "choice", "values": ["sgd"]}}}},
        "search.space.optimizer",
    ),
    (
        "search_bad_values",
        {"search": {"space": {"batch_size": {"type": "choice", "values": [0, 2]}}}},
        "search.space.batch_size",
    ),
    (
        "search_needs_validation",
        {"search": {"space": {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}},
        "search.metric",
    ),
    (
        "search_inverted_range",
        {"search": {"space": {"learning_rate": {"type": "uniform", "low": 1, "high": 0.1}}}},
        "search.space.learning_rate",
    ),
    ("integrations", {"integrations": [{"type": "wandb"}]}, "integrations[0].wandb"),
    ("string_for_int", {"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
]


@pytest.mark.parametrize(("name", "override", "param"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_specs_are_refused_naming_the_param(
    client: TestClient, name: str, override: Any, param: str
) -> None:
    t = make_tenant(client)
    body = override(client, t) if callable(override) else dict(override)
    if body.get("training_file", "") is None:
        r = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-gpt2"}, headers=t.headers)
    else:
        r = create_job(client, t, **body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"
    assert err["message"]
    assert client.get("/v1/fine_tuning/jobs", headers=t.headers).json()["data"] == []


def test_jobs_paginate_newest_first(client: TestClient) -> None:
    t = make_tenant(client)
    file_id = upload_ok(client, t)
    ids = [create_job_ok(client, t, training_file=file_id)["id"] for _ in range(5)]
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if after:
            params["after"] = after
        page = client.get("/v1/fine_tuning/jobs", params=params, headers=t.headers).json()
        pages += 1
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == list(reversed(ids))
    assert pages == 3
    r = client.get("/v1/fine_tuning/jobs", params={"after": "ftjob-nope"}, headers=t.headers)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "after"
    r = client.get("/v1/fine_tuning/jobs", params={"limit": 0}, headers=t.headers)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "limit"
    # OpenAI sets no maximum: a limit past our page size is served, not refused.
    r = client.get("/v1/fine_tuning/jobs", params={"limit": 5000}, headers=t.headers)
    assert r.status_code == 200, r.text
    assert [j["id"] for j in r.json()["data"]] == list(reversed(ids))


def test_a_limit_past_a_page_is_served_as_a_full_page(client: TestClient, app: FastAPI) -> None:
    t = make_tenant(client)
    job = create_job_ok(client, t)
    with Session(app.state.engine) as s:
        for step in range(120):
            add_event(s, job["id"], t.id, f"step {step}", type_="metrics", data={"step": step})
        s.commit()
    url = f"/v1/fine_tuning/jobs/{job['id']}/events"
    page = client.get(url, params={"limit": 1000}, headers=t.headers).json()
    assert len(page["data"]) == 100 and page["has_more"] is True
    rest = client.get(
        url, params={"limit": 1000, "after": page["data"][-1]["id"]}, headers=t.headers
    ).json()
    assert len(rest["data"]) == 21 and rest["has_more"] is False  # and the queued event


def test_idempotent_retry_returns_the_same_job(client: TestClient) -> None:
    t = make_tenant(client)
    file_id = upload_ok(client, t)
    body = {"model": "tiny-gpt2", "training_file": file_id}
    headers = {**t.headers, "Idempotency-Key": "retry-1"}
    first = client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    again = client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert len(client.get("/v1/fine_tuning/jobs", headers=t.headers).json()["data"]) == 1
    # The same key with a different request is a client bug, not a retry.
    other = client.post("/v1/fine_tuning/jobs", json={**body, "seed": 1}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # Keys are per tenant.
    u = make_tenant(client)
    body_u = {"model": "tiny-gpt2", "training_file": upload_ok(client, u)}
    r = client.post(
        "/v1/fine_tuning/jobs", json=body_u, headers={**u.headers, "Idempotency-Key": "retry-1"}
    )
    assert r.status_code == 200
    assert r.json()["id"] != first.json()["id"]


def test_a_failed_request_is_not_remembered(client: TestClient) -> None:
    t = make_tenant(client)
    headers = {**t.headers, "Idempotency-Key": "k"}
    r = client.post(
        "/v1/fine_tuning/jobs", json={"model": "nope", "training_file": "f"}, headers=headers
    )
    assert r.status_code == 400
    # The corrected request may reuse the key: only successes are remembered.
    body = {"model": "tiny-gpt2", "training_file": upload_ok(client, t)}
    fixed = client.post("/v1/fine_tuning/jobs", json=body, headers=headers)
    assert fixed.status_code == 200
    assert client.post("/v1/fine_tuning/jobs", json=body, headers=headers).json() == fixed.json()


def test_cancel_queued_job(client: TestClient) -> None:
    t = make_tenant(client)
    job = create_job_ok(client, t)
    r = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=t.headers)
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    # Cancelling again is harmless.
    again = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=t.headers)
    assert again.json()["status"] == "cancelled"
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=t.headers).json()
    assert events["data"][0]["message"] == "Job cancelled before it started"
    assert (
        client.post("/v1/fine_tuning/jobs/ftjob-nope/cancel", headers=t.headers).status_code == 404
    )


def test_finished_job_cannot_be_cancelled(client: TestClient, app: FastAPI) -> None:
    t = make_tenant(client)
    job = create_job_ok(client, t)
    with Session(app.state.engine) as s:
        assert transition(s, job["id"], JobStatus.RUNNING)
        assert transition(s, job["id"], JobStatus.SUCCEEDED)
        s.commit()
    r = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=t.headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "job_not_cancellable"


def test_transition_is_compare_and_set(client: TestClient, app: FastAPI) -> None:
    t = make_tenant(client)
    job = create_job_ok(client, t)
    with Session(app.state.engine) as a, Session(app.state.engine) as b:
        assert transition(a, job["id"], JobStatus.RUNNING, expected=(JobStatus.QUEUED,))
        a.commit()
        # A second starter that read "queued" earlier loses: the row is no longer queued.
        assert not transition(b, job["id"], JobStatus.RUNNING, expected=(JobStatus.QUEUED,))
        # Transitions outside the table never happen.
        assert not transition(b, job["id"], JobStatus.VALIDATING_FILES)
        b.commit()
    got = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=t.headers).json()
    assert got["status"] == "running"
    assert got["started_at"] is not None
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=t.headers).json()
    # Status changes are OpenAI's "message" events, their data naming the status.
    assert [(e["type"], e["data"]["status"]) for e in events["data"]] == [
        ("message", "running"),
        ("message", "queued"),
    ]


def test_queued_quota_answers_429(client: TestClient) -> None:
    t = make_tenant(client, quotas={"max_queued_jobs": 2})
    file_id = upload_ok(client, t)
    create_job_ok(client, t, training_file=file_id)
    create_job_ok(client, t, training_file=file_id)
    r = create_job(client, t, training_file=file_id)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "quota_exceeded"
    assert "max_queued_jobs=2" in r.json()["error"]["message"]
    client.patch(
        f"/v1/admin/tenants/{t.id}", json={"quotas": {"max_queued_jobs": 3}}, headers=ADMIN
    )
    assert create_job(client, t, training_file=file_id).status_code == 200


def test_events_and_checkpoints_paginate(client: TestClient, app: FastAPI) -> None:
    t = make_tenant(client)
    job = create_job_ok(client, t)
    with Session(app.state.engine) as s:
        for step in (10, 20, 30):
            s.add(
                Checkpoint(
                    id=f"ftckpt-{job['id']}-{step}",
                    job_id=job["id"],
                    tenant_id=t.id,
                    step_number=step,
                    metrics={"step": step, "train_loss": 1.0 / step},
                    uri=f"file:///ckpt/{step}",
                    fine_tuned_model_checkpoint=f"ft:tiny-gpt2:{t.name}::{job['id']}:ckpt-step-{step}",
                    created_at=now(),
                )
            )
        s.commit()
    url = f"/v1/fine_tuning/jobs/{job['id']}/checkpoints"
    first = client.get(url, params={"limit": 2}, headers=t.headers).json()
    assert [c["step_number"] for c in first["data"]] == [30, 20]
    assert first["has_more"] is True
    assert first["data"][0]["object"] == "fine_tuning.job.checkpoint"
    rest = client.get(url, params={"limit": 2, "after": first["last_id"]}, headers=t.headers).json()
    assert [c["step_number"] for c in rest["data"]] == [10]
    assert rest["has_more"] is False
    assert (rest["first_id"], rest["last_id"]) == (rest["data"][0]["id"],) * 2
    past = client.get(url, params={"after": rest["last_id"]}, headers=t.headers).json()
    # Empty: no ids to name, and OpenAI's lists take strings there ("" rather than null).
    assert (past["data"], past["first_id"], past["last_id"]) == ([], "", "")

    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=t.headers)  # a 2nd event
    events_url = f"/v1/fine_tuning/jobs/{job['id']}/events"
    one = client.get(events_url, params={"limit": 1}, headers=t.headers).json()
    assert one["has_more"] is True
    two = client.get(
        events_url, params={"limit": 1, "after": one["data"][0]["id"]}, headers=t.headers
    ).json()
    assert two["has_more"] is False
    assert two["data"][0]["id"] != one["data"][0]["id"]

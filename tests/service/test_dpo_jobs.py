"""DPO jobs and jobs that continue a fine-tuned model, as the API takes them (no Ray):
the method's shape, what is refused and with which param, and model lineage."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from service.common import now
from service.db import new_session
from service.jobs.lifecycle import JobLifecycle
from service.jobs.state import transition
from service.models import Checkpoint, FineTunedModel
from service.models.status import JobStatus
from tests.factories import (
    TenantHandle,
    add_model,
    classification_records,
    create_job,
    create_job_ok,
    jsonl,
    make_tenant,
    upload_ok,
)

PAIRS = [
    {
        "input": {"messages": [{"role": "user", "content": f"Name colour {i}."}]},
        "preferred_output": [{"role": "assistant", "content": f"Colour {i} is red."}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    for i in range(6)
]


def preference_file(client: TestClient, tenant: TenantHandle) -> str:
    return upload_ok(client, tenant, jsonl(PAIRS))


def dpo(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


def test_a_dpo_job_is_queued_with_openais_method_shape(client: TestClient) -> None:
    t = make_tenant(client)
    pairs = preference_file(client, t)
    job = create_job_ok(
        client,
        t,
        training_file=pairs,
        validation_file=pairs,
        method=dpo(beta=0.3, n_epochs=2, learning_rate_multiplier=0.5),
    )
    assert job["method"]["type"] == "dpo"
    hp = job["method"]["dpo"]["hyperparameters"]
    assert hp["beta"] == 0.3
    assert hp["n_epochs"] == 2
    assert hp["learning_rate_multiplier"] == 0.5
    assert isinstance(hp["batch_size"], int)
    auto = create_job_ok(client, t, training_file=pairs, method={"type": "dpo"})
    assert auto["method"]["dpo"]["hyperparameters"]["beta"] == 0.1, "auto beta is DPO's usual"
    searched = create_job_ok(
        client,
        t,
        training_file=pairs,
        validation_file=pairs,
        method=dpo(),
        search={
            "space": {
                "beta": {"type": "choice", "values": [0.05, 0.5]},
                "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            },
            "metric": "eval_reward_accuracy",
            "mode": "max",
            "num_trials": 2,
        },
    )
    assert searched["search"]["metric"] == "eval_reward_accuracy"


BAD_DPO: list[tuple[str, dict[str, Any], str]] = [
    ("beta_zero", {"method": dpo(beta=0)}, "method.dpo.hyperparameters.beta"),
    ("beta_over_two", {"method": dpo(beta=2.5)}, "method.dpo.hyperparameters.beta"),
    ("beta_word", {"method": dpo(beta="high")}, "method.dpo.hyperparameters.beta"),
    (
        "beta_under_supervised",
        {"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}},
        "method.supervised.hyperparameters.beta",
    ),
    (
        "dpo_settings_under_supervised_type",
        {"method": {"type": "supervised", "dpo": {"hyperparameters": {"beta": 0.1}}}},
        "method.dpo",
    ),
    (
        "supervised_settings_under_dpo_type",
        {"method": {"type": "dpo", "supervised": {"hyperparameters": {"n_epochs": 1}}}},
        "method.supervised",
    ),
    (
        "legacy_hyperparameters",
        {"method": dpo(), "hyperparameters": {"n_epochs": 1}},
        "hyperparameters",
    ),
    ("classifier_base_model", {"model": "tiny-bert", "method": dpo()}, "model"),
    ("classification_task", {"task": "sequence_classification", "method": dpo()}, "task"),
    ("reinforcement", {"method": {"type": "reinforcement"}}, "method.type"),
    (
        "beta_search_without_dpo",
        {"method": None, "search": {"space": {"beta": {"type": "choice", "values": [0.1]}}}},
        "search.space.beta",
    ),
    (
        "beta_search_out_of_range",
        {"search": {"space": {"beta": {"type": "choice", "values": [0.1, 3.0]}}}},
        "search.space.beta",
    ),
    (
        "reward_accuracy_wants_max",
        {
            "search": {
                "space": {"beta": {"type": "choice", "values": [0.1]}},
                "metric": "eval_reward_accuracy",
            }
        },
        "search.mode",
    ),
]


@pytest.mark.parametrize(("name", "override", "param"), BAD_DPO, ids=[b[0] for b in BAD_DPO])
def test_bad_dpo_specs_are_refused_naming_the_param(
    client: TestClient, name: str, override: dict[str, Any], param: str
) -> None:
    t = make_tenant(client)
    pairs = preference_file(client, t)
    body: dict[str, Any] = {"training_file": pairs, "validation_file": pairs, "method": dpo()}
    body.update(override)
    if body["method"] is None:
        del body["method"]
        body["training_file"] = body["validation_file"] = upload_ok(client, t)
    r = create_job(client, t, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_files_must_fit_the_method(client: TestClient) -> None:
    t = make_tenant(client)
    pairs, chats = preference_file(client, t), upload_ok(client, t)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"training_file": pairs}, "training_file", "method 'dpo'"),
        ({"training_file": chats, "method": dpo()}, "training_file", "preference files"),
        (
            {"training_file": pairs, "validation_file": chats, "method": dpo()},
            "validation_file",
            "preference files",
        ),
    ]
    for body, param, said in cases:
        r = create_job(client, t, **body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["param"], error["code"]) == (param, "invalid_file_format")
        assert said in error["message"]


# ------------------------------------------------------------------ continued training


def _parent(client: TestClient, app: FastAPI, t: TenantHandle, **body: Any) -> tuple[str, str]:
    """A job and the fine-tuned model it made (registered as a succeeded job's is)."""
    job = create_job_ok(client, t, **body)
    model_id = f"ft:{job['model']}:{t.name}::{job['id']}"
    add_model(app.state.engine, t, job["id"], model_id, task=job["task"])
    return job["id"], model_id


def test_a_job_continues_a_fine_tuned_model_and_its_checkpoints(
    client: TestClient, app: FastAPI
) -> None:
    t = make_tenant(client)
    _, parent = _parent(client, app, t, adapter={"type": "lora", "r": 4, "alpha": 8})
    child = create_job_ok(client, t, model=parent)
    assert child["model"] == parent, "the job shows the model it was asked to continue"
    assert child["adapter"]["r"] == 4 and child["adapter"]["alpha"] == 8
    with Session(app.state.engine) as s:
        job = JobLifecycle(s).job(child["id"])
        assert job is not None and job.spec is not None
        assert job.spec["init_from"] == {
            "model": parent,
            "uri": "file:///nowhere",
            "adapter": "lora",
        }
        assert job.spec["base_model"]["name"] == "tiny-gpt2"
        assert JobLifecycle(s).model_id(job) == f"ft:tiny-gpt2:{t.name}::{child['id']}"

    # SFT, then DPO on the SFT model; and a checkpoint as the start.
    pairs = preference_file(client, t)
    create_job_ok(client, t, model=parent, training_file=pairs, method=dpo(beta=0.2))
    checkpoint = f"{parent}:ckpt-step-3"
    with new_session(app.state.engine) as s:
        s.add(
            Checkpoint(
                id="ftckpt-continue",
                job_id=parent.rsplit(":", 1)[1],
                tenant_id=t.id,
                step_number=3,
                metrics={},
                uri="file:///nowhere/ckpt",
                fine_tuned_model_checkpoint=checkpoint,
                created_at=now(),
            )
        )
        s.commit()
    from_checkpoint = create_job_ok(client, t, model=checkpoint)
    with Session(app.state.engine) as s:
        job = JobLifecycle(s).job(from_checkpoint["id"])
        assert job is not None and job.spec is not None
        assert job.spec["init_from"]["uri"] == "file:///nowhere/ckpt/model"


def test_continuing_refusals(client: TestClient, app: FastAPI) -> None:
    t, other = make_tenant(client), make_tenant(client)
    _, parent = _parent(client, app, t)
    _, theirs = _parent(client, app, other)

    def refused(model: str, **body: Any) -> tuple[int, str | None, str | None]:
        r = create_job(client, t, model=model, **body)
        error = r.json()["error"]
        return r.status_code, error["param"], error["code"]

    assert refused(theirs) == (404, "model", "model_not_found")
    assert refused(parent + "x") == (404, "model", "model_not_found")
    assert refused(f"{parent}:ckpt-step-9")[:2] == (404, "model")
    assert refused(parent, adapter={"type": "lora", "r": 32})[:2] == (400, "adapter.r")
    assert refused(parent, task="sequence_classification")[:2] == (400, "task")
    assert client.delete(f"/v1/models/{parent}", headers=t.headers).status_code == 200
    assert refused(parent) == (400, "model", "model_deleted")


def test_a_continued_classifier_keeps_its_labels_and_refuses_dpo(
    client: TestClient, app: FastAPI
) -> None:
    t = make_tenant(client)
    labels = upload_ok(client, t, jsonl(classification_records(6)))
    _, parent = _parent(client, app, t, model="tiny-bert", training_file=labels)
    child = create_job_ok(client, t, model=parent, training_file=labels)
    assert child["task"] == "sequence_classification"
    more = [{"text": "so-so", "label": "meh"}, *classification_records(4)]
    r = create_job(client, t, model=parent, training_file=upload_ok(client, t, jsonl(more)))
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    r = create_job(client, t, model=parent, training_file=preference_file(client, t), method=dpo())
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_a_model_shows_its_lineage(client: TestClient, app: FastAPI) -> None:
    t = make_tenant(client)
    _, parent = _parent(client, app, t)

    def register(job: dict[str, Any]) -> str:
        """The job's model, and the job succeeded (a queued one continuing from an ancestor
        would keep that ancestor from being deleted)."""
        model_id = f"ft:tiny-gpt2:{t.name}::{job['id']}"
        with Session(app.state.engine) as s:
            row = JobLifecycle(s).job(job["id"])
            assert row is not None
            s.add(
                FineTunedModel.of_job(row, id=model_id, artifact_uri="file:///m", created_at=now())
            )
            assert transition(s, job["id"], JobStatus.RUNNING)
            assert transition(s, job["id"], JobStatus.SUCCEEDED)
            s.commit()
        return model_id

    child = register(create_job_ok(client, t, model=parent))
    grandchild = register(create_job_ok(client, t, model=child))
    shown = client.get(f"/v1/models/{grandchild}", headers=t.headers).json()
    assert shown["parent"] == child
    assert shown["lineage"] == ["tiny-gpt2", parent, child]
    assert shown["base_model"] == "tiny-gpt2"
    # The lineage outlives a deleted ancestor.
    assert client.delete(f"/v1/models/{parent}", headers=t.headers).status_code == 200
    shown = client.get(f"/v1/models/{grandchild}", headers=t.headers).json()
    assert shown["lineage"] == ["tiny-gpt2", parent, child]

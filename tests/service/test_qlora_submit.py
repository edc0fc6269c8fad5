"""QLoRA jobs as the API takes them (no Ray): adapter type "qlora" is LoRA's fields and
learning rate with a 4-bit base, accepted with or without a GPU (bitsandbytes trains on
CPU too), searchable over LoRA's params, and kept by a job that continues its model."""

from __future__ import annotations

import io

import openai
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from service.jobs.lifecycle import JobLifecycle
from tests.factories import add_model, chat_records, create_job, create_job_ok, jsonl, make_tenant

QLORA = {"type": "qlora", "r": 4, "alpha": 8}


def test_a_qlora_job_is_queued_with_loras_learning_rate(client: TestClient) -> None:
    t = make_tenant(client)
    qlora = create_job_ok(client, t, adapter=QLORA)
    lora = create_job_ok(client, t, adapter={**QLORA, "type": "lora"})
    assert qlora["status"] == "queued"
    assert qlora["adapter"]["type"] == "qlora" and qlora["adapter"]["r"] == 4
    # Only the frozen base is 4-bit: the adapter trains at the catalog's LoRA rate.
    assert qlora["hyperparameters"]["learning_rate"] == lora["hyperparameters"]["learning_rate"]
    multiplier = "learning_rate_multiplier"
    assert qlora["hyperparameters"][multiplier] == lora["hyperparameters"][multiplier]
    # No GPU asked for: the CPU backend of bitsandbytes trains it.
    assert qlora["resources"]["use_gpu"] is False


def test_qlora_fields_are_checked_and_named_as_loras(client: TestClient) -> None:
    t = make_tenant(client)
    r = create_job(client, t, adapter={**QLORA, "dropout": 1.5})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "adapter.dropout"
    r = create_job(client, t, adapter={**QLORA, "bits": 4})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "adapter.bits"


def test_a_qlora_search_may_vary_loras_rank(client: TestClient) -> None:
    t = make_tenant(client)
    valid = create_job_ok(
        client,
        t,
        adapter=QLORA,
        validation_file=None,
        search={"space": {"lora_r": {"type": "choice", "values": [4, 8]}}, "metric": "train_loss"},
    )
    assert valid["adapter"]["type"] == "qlora"
    r = create_job(
        client,
        t,
        adapter=QLORA,
        search={"space": {"lora_r": {"type": "choice", "values": [0, 8]}}, "metric": "train_loss"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "search.space.lora_r"


def test_a_job_continuing_a_qlora_model_keeps_its_adapter(client: TestClient, app: FastAPI) -> None:
    t = make_tenant(client)
    parent_job = create_job_ok(client, t, adapter=QLORA)
    parent = f"ft:tiny-gpt2:{t.name}::{parent_job['id']}"
    add_model(app.state.engine, t, parent_job["id"], parent)
    child = create_job_ok(client, t, model=parent)
    assert child["adapter"]["type"] == "qlora" and child["adapter"]["r"] == 4
    with Session(app.state.engine) as s:
        job = JobLifecycle(s).job(child["id"])
        assert job is not None and job.spec is not None
        # The parent's weights are a LoRA adapter, whatever precision its base trained in.
        assert job.spec["init_from"]["adapter"] == "lora"
    # The same adapter may go on in full precision; its rank may not change.
    assert create_job_ok(client, t, model=parent, adapter={**QLORA, "type": "lora"})
    r = create_job(client, t, model=parent, adapter={**QLORA, "r": 8})
    assert r.status_code == 400 and r.json()["error"]["param"] == "adapter.r", r.text


def test_the_openai_client_submits_a_qlora_job(client: TestClient) -> None:
    t = make_tenant(client)
    sdk = openai.OpenAI(
        api_key=t.key, base_url="http://testserver/v1", http_client=client, max_retries=0
    )
    train = sdk.files.create(
        file=("train.jsonl", io.BytesIO(jsonl(chat_records(6)))), purpose="fine-tune"
    )
    job = sdk.fine_tuning.jobs.create(
        model="tiny-gpt2", training_file=train.id, extra_body={"adapter": QLORA}
    )
    assert job.status == "queued"
    assert (job.model_extra or {})["adapter"]["type"] == "qlora"
    try:
        sdk.fine_tuning.jobs.create(
            model="tiny-gpt2",
            training_file=train.id,
            extra_body={"adapter": {**QLORA, "r": 0}},
        )
    except openai.BadRequestError as exc:
        assert exc.status_code == 400 and exc.param == "adapter.r"
    else:
        raise AssertionError("a QLoRA rank of 0 was accepted")

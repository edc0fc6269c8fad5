"""The official `openai` client, unchanged, against Tuneplane."""

from __future__ import annotations

import io

import openai
import pytest
from fastapi.testclient import TestClient

from tests.factories import chat_records, jsonl, make_tenant


def _client(http: TestClient, key: str) -> openai.OpenAI:
    # TestClient is an httpx.Client, so the SDK talks to the real app in-process.
    return openai.OpenAI(
        api_key=key, base_url="http://testserver/v1", http_client=http, max_retries=0
    )


def test_openai_sdk_files_jobs_models(client: TestClient) -> None:
    t = make_tenant(client)
    sdk = _client(client, t.key)

    train = sdk.files.create(
        file=("train.jsonl", io.BytesIO(jsonl(chat_records(6)))), purpose="fine-tune"
    )
    assert train.id.startswith("file-")
    assert train.purpose == "fine-tune"
    assert sdk.files.retrieve(train.id).bytes == train.bytes
    assert sdk.files.content(train.id).content == jsonl(chat_records(6))
    assert train.id in {f.id for f in sdk.files.list()}

    job = sdk.fine_tuning.jobs.create(
        model="tiny-gpt2",
        training_file=train.id,
        suffix="sdk",
        seed=42,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}},
        },
        extra_body={"adapter": {"type": "lora", "r": 4}},
    )
    assert job.status == "queued"
    assert job.seed == 42
    assert job.hyperparameters.n_epochs == 2
    assert job.method is not None
    assert job.method.type == "supervised"

    got = sdk.fine_tuning.jobs.retrieve(job.id)
    assert got.id == job.id
    assert got.training_file == train.id

    second = sdk.fine_tuning.jobs.create(model="tiny-gpt2", training_file=train.id)
    page = sdk.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [second.id]
    assert page.has_more
    # The SDK's auto-pagination follows `after` cursors to the end.
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=1)] == [second.id, job.id]

    events = sdk.fine_tuning.jobs.list_events(job.id, limit=10)
    assert events.data[0].message == f"Validated training file {train.id}; job queued"
    assert all(e.object == "fine_tuning.job.event" for e in events.data)

    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"

    assert sdk.fine_tuning.jobs.checkpoints.list(job.id).data == []

    models = {m.id for m in sdk.models.list()}
    assert {"tiny-gpt2", "tiny-bert"} <= models


def test_openai_sdk_sees_errors_as_its_own_exceptions(client: TestClient) -> None:
    t = make_tenant(client)
    sdk = _client(client, t.key)
    with pytest.raises(openai.NotFoundError) as nf:
        sdk.fine_tuning.jobs.retrieve("ftjob-missing")
    assert nf.value.code == "not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.create(model="gpt-unknown", training_file="file-x")
    assert bad.value.param == "model"
    with pytest.raises(openai.AuthenticationError):
        _client(client, "wrong").models.list()

"""Builders for test data and API objects; tests say what differs, not everything."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from service.common import now
from service.models import FineTunedModel
from service.storage import ArtifactStore
from tests.fixtures.app import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
_names = itertools.count()


@dataclass
class TenantHandle:
    id: str
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def chat_records(n: int = 4) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i + i}"},
            ]
        }
        for i in range(n)
    ]


def prompt_completion_records(n: int = 4) -> list[dict[str, Any]]:
    return [{"prompt": f"Count after {i}:", "completion": f" {i + 1}"} for i in range(n)]


def text_records(n: int = 4) -> list[dict[str, Any]]:
    return [{"text": f"The number {i} comes before {i + 1}."} for i in range(n)]


def classification_records(n: int = 4) -> list[dict[str, Any]]:
    return [
        {"text": f"review {i}: {'great' if i % 2 else 'awful'}", "label": "pos" if i % 2 else "neg"}
        for i in range(n)
    ]


def make_tenant(client: TestClient, name: str | None = None, **extra: Any) -> TenantHandle:
    name = name or f"tenant-{next(_names)}"
    r = client.post("/v1/admin/tenants", json={"name": name, **extra}, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    return TenantHandle(id=body["tenant"]["id"], name=name, key=body["api_key"])


def upload(
    client: TestClient,
    tenant: TenantHandle,
    content: bytes | None = None,
    filename: str = "train.jsonl",
    purpose: str = "fine-tune",
    headers: dict[str, str] | None = None,
) -> Any:
    data = content if content is not None else jsonl(chat_records())
    return client.post(
        "/v1/files",
        files={"file": (filename, data, "application/jsonl")},
        data={"purpose": purpose},
        headers={**tenant.headers, **(headers or {})},
    )


def upload_ok(client: TestClient, tenant: TenantHandle, content: bytes | None = None) -> str:
    r = upload(client, tenant, content)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def create_job(client: TestClient, tenant: TenantHandle, **body: Any) -> Any:
    if "training_file" not in body:
        body["training_file"] = upload_ok(client, tenant)
    body.setdefault("model", "tiny-gpt2")
    return client.post("/v1/fine_tuning/jobs", json=body, headers=tenant.headers)


def create_job_ok(client: TestClient, tenant: TenantHandle, **body: Any) -> dict[str, Any]:
    r = create_job(client, tenant, **body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def add_model(
    engine: Engine, tenant: TenantHandle, job_id: str, model_id: str, task: str = "causal_lm"
) -> None:
    """A fine-tuned model row, as the event consumer registers one when a job succeeds."""
    with Session(engine) as s:
        s.add(
            FineTunedModel(
                id=model_id,
                tenant_id=tenant.id,
                job_id=job_id,
                base_model="tiny-gpt2",
                task=task,
                adapter_type="lora",
                artifact_uri="file:///nowhere",
                created_at=now(),
            )
        )
        s.commit()


def tiny_tokenizer(models_dir: Path, name: str = "tiny-gpt2") -> Any:
    from transformers import AutoTokenizer

    from workers.sources import resolve_model_source

    return AutoTokenizer.from_pretrained(resolve_model_source(f"tiny:{name}", models_dir))


def tokens_in(tokenizer: Any, rows: list[dict[str, Any]]) -> int:
    """Tokens one epoch over `rows` trains on, counted from the data with the tokenizer:
    a prompt with its special tokens, the completion, the end-of-sequence token; a text
    to classify with its special tokens."""
    if "text" in rows[0]:
        return sum(len(tokenizer(r["text"])["input_ids"]) for r in rows)
    return sum(
        len(tokenizer(r["prompt"])["input_ids"])
        + len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"])
        + 1
        for r in rows
    )


def publish_model(store: ArtifactStore, tenant_id: str, job_id: str) -> str:
    """A job's model as its worker publishes it (a manifest beside non-empty weights): a
    result naming a folder without them fails the job (`model_missing`). Its URI."""
    folder = f"{tenant_id}/jobs/{job_id}/model"
    store.write_bytes(f"{folder}/tuneplane.json", b'{"metrics": {}}')
    store.write_bytes(f"{folder}/adapter_model.safetensors", b"\0" * 64)
    return str(store.uri_for(folder))

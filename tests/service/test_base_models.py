"""Base models as data: registration validates before it accepts, every replica sees it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.factories import (
    ADMIN,
    create_job,
    jsonl,
    make_tenant,
    prompt_completion_records,
    upload_ok,
)
from workers.tiny import build

URL = "/v1/admin/base_models"


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: build(name, root) for name in ("tiny-llama", "tiny-gpt2", "tiny-bert")}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _refused(client: TestClient, body: dict[str, object], param: str, words: str) -> None:
    r = client.post(URL, json=body, headers=ADMIN)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_model", error
    assert words in error["message"], error["message"]


def test_register_a_local_folder_list_it_fine_tune_it_and_delete_it(
    client: TestClient, settings: Settings, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    folder = _copy(tiny_dirs["tiny-llama"], tmp_path / "my-llama")
    r = client.post(URL, json={"name": "acme/llama-mini", "source": str(folder)}, headers=ADMIN)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "acme/llama-mini" and out["registered"] is True
    assert (out["tasks"], out["architecture"], out["chat"]) == (["causal_lm"], "llama", True)
    assert out["max_length"] == 256  # the tokenizer's limit

    # Tenants see it and fine-tune it; the job's spec carries the source itself.
    t = make_tenant(client)
    names = [m["id"] for m in client.get("/v1/models", headers=t.headers).json()["data"]]
    assert "acme/llama-mini" in names and "smollm2-135m-instruct" in names
    train = upload_ok(client, t, jsonl(prompt_completion_records(8)))
    job = create_job(client, t, model="acme/llama-mini", training_file=train)
    assert job.status_code == 200, job.text

    # A new process on the same database (a restart, another replica) sees it too.
    with TestClient(create_app(settings)) as other:
        listed = other.get(URL, headers=ADMIN).json()["data"]
        assert "acme/llama-mini" in [m["id"] for m in listed]
        assert other.get(f"{URL}/acme/llama-mini", headers=ADMIN).json()["source"] == str(folder)

    # Tenants cannot register or delete.
    assert (
        client.post(URL, json={"name": "x", "source": str(folder)}, headers=t.headers).status_code
        == 403
    )
    assert client.delete(f"{URL}/acme/llama-mini", headers=t.headers).status_code == 403
    # Names are unique, built-in ones included; built-in models cannot be deleted.
    for name in ("acme/llama-mini", "tiny-gpt2"):
        r = client.post(URL, json={"name": name, "source": str(folder)}, headers=ADMIN)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "model_exists")
    assert client.delete(f"{URL}/tiny-gpt2", headers=ADMIN).status_code == 403

    # Deleted: no new job, but the queued one keeps its spec (files are never touched).
    assert client.delete(f"{URL}/acme/llama-mini", headers=ADMIN).status_code == 200
    assert client.get(f"{URL}/acme/llama-mini", headers=ADMIN).status_code == 404
    r = create_job(client, t, model="acme/llama-mini", training_file=train)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    detail = client.get(f"/v1/fine_tuning/jobs/{job.json()['id']}", headers=t.headers).json()
    assert detail["status"] == "queued" and folder.is_dir()


def test_registration_refusals_name_the_field_and_the_reason(
    client: TestClient, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    _refused(client, {"name": "a", "source": str(tmp_path / "nope")}, "source", "not a directory")
    _refused(client, {"name": "a", "source": "not a path or id"}, "source", "neither")

    pickled = _copy(tiny_dirs["tiny-gpt2"], tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    _refused(client, {"name": "a", "source": str(pickled)}, "source", "safe_serialization=True")

    no_config = _copy(tiny_dirs["tiny-gpt2"], tmp_path / "no-config")
    (no_config / "config.json").unlink()
    _refused(client, {"name": "a", "source": str(no_config)}, "source", "no config.json")

    bad_tokenizer = _copy(tiny_dirs["tiny-gpt2"], tmp_path / "bad-tokenizer")
    for pattern in ("tokenizer*", "vocab*", "merges*", "special_tokens*"):
        for f in bad_tokenizer.glob(pattern):
            f.unlink()
    _refused(client, {"name": "a", "source": str(bad_tokenizer)}, "source", "tokenizer")

    no_template = _copy(tiny_dirs["tiny-gpt2"], tmp_path / "no-template")
    for f in no_template.glob("chat_template*"):
        f.unlink()
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    _refused(client, {"name": "a", "source": str(no_template), "chat": True}, "chat", "template")
    # Without chat it is accepted, and refuses chat data at submit.
    r = client.post(URL, json={"name": "plain-gpt2", "source": str(no_template)}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["chat"] is False, r.text

    vision = tmp_path / "vision"
    vision.mkdir()
    (vision / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (vision / "model.safetensors").write_bytes(b"")
    _refused(client, {"name": "a", "source": str(vision)}, "source", "neither a causal-LM")

    body = {"name": "a", "source": str(tiny_dirs["tiny-llama"]), "max_length": 4096}
    _refused(client, body, "max_length", "over the model's limit of 256")
    r = client.post(URL, json={**body, "name": "ft:x"}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"


def test_a_storage_uri_registers_and_resolves_for_the_workers(
    client: TestClient, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from workers.sources import resolve_model_source

    folder = _copy(tiny_dirs["tiny-llama"], tmp_path / "in-store")
    uri = folder.as_uri()
    r = client.post(URL, json={"name": "stored-llama", "source": uri}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["source"] == uri and r.json()["tasks"] == ["causal_lm"]
    # What the training workers and replicas load it from.
    assert Path(resolve_model_source(uri, tmp_path / "models")) == folder
    _refused(client, {"name": "a", "source": (tmp_path / "nothing").as_uri()}, "source", "")


def test_hub_ids_resolve_from_the_local_cache_when_offline(
    client: TestClient,
    tiny_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    _refused(client, {"name": "a", "source": "acme/bert-mini"}, "source", "local Hugging Face")
    # The cache's layout: models--org--name/{refs/main, snapshots/<revision>/...}.
    repo = cache / "models--acme--bert-mini"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny_dirs["tiny-bert"], repo / "snapshots" / ("0" * 40))
    r = client.post(URL, json={"name": "acme/bert-mini", "source": "acme/bert-mini"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["tasks"] == ["sequence_classification"]

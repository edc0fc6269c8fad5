"""GET /v1/models/{id}/content on both databases, without Ray: a real LoRA adapter on the
tiny GPT-2 is published (and written as a checkpoint) as a job's run writes them, and the
exports are checked by loading them. The served path is in
tests/service/serving/test_serving.py."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.cli.models import UnsafeArchive, extract_model
from service.common import now
from service.db import new_session
from service.jobs.lifecycle import JobLifecycle
from service.models import FineTunedModel
from service.registry import export as export_module
from tests.factories import TenantHandle, create_job_ok, make_tenant
from workers.checkpoints import write_serving_files
from workers.modeling import apply_lora, load_base_model
from workers.publish import publish
from workers.records import CheckpointData
from workers.sources import resolve_model_source
from workers.spec import MANIFEST_FILE, JobSpec, LoraAdapter
from workers.storage import checkpoint_uri, run_storage_uri

ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json"}
TEXT = "red -> cat"


def _spec(engine: Engine, job_id: str) -> JobSpec:
    with new_session(engine) as s:
        job = JobLifecycle(s).job(job_id)
        assert job is not None and job.spec is not None
        return JobSpec.model_validate(job.spec, strict=False)


def _adapter(spec: JobSpec, models_dir: Path, seed: int) -> Any:
    """The job's LoRA adapter with random weights (a new one is zero: merged would tie)."""
    assert isinstance(spec.adapter, LoraAdapter)
    torch.manual_seed(seed)
    base = load_base_model(spec, resolve_model_source(spec.base_model.source, models_dir))
    model = apply_lora(base, spec, spec.adapter)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.05)
    return model.eval()


def _publish_model(engine: Engine, tenant: TenantHandle, job_id: str, models_dir: Path) -> Any:
    """The job's model published as the worker publishes it, and registered as the event
    consumer registers it; returns the peft model."""
    spec = _spec(engine, job_id)
    model = _adapter(spec, models_dir, seed=1)
    run = models_dir.parent / "run"
    model.save_pretrained(run / "model")
    uri = publish(spec, run, str(models_dir), {"train_loss": 1.0})
    with new_session(engine) as s:
        job = JobLifecycle(s).job(job_id)
        assert job is not None
        model_id = f"ft:tiny-gpt2:{tenant.name}:s:{job_id}"
        s.add(FineTunedModel.of_job(job, id=model_id, artifact_uri=uri, created_at=now()))
        s.commit()
    return model


def _report_checkpoint(
    engine: Engine, job_id: str, step: int, loss: float, models_dir: Path
) -> Any:
    """A LoRA checkpoint written as a run writes it (no tokenizer) and recorded as the
    consumer records it; returns the peft model."""
    spec = _spec(engine, job_id)
    model = _adapter(spec, models_dir, seed=100 + step)
    uri = checkpoint_uri(run_storage_uri(spec.output_uri), f"checkpoint-{step:07d}")
    directory = Path(fsspec.core.url_to_fs(uri)[1])
    model.save_pretrained(directory / "model")
    write_serving_files(directory, spec, {"train_loss": loss}, tokenizer=None)
    with new_session(engine) as s:
        jobs = JobLifecycle(s)
        job = jobs.job(job_id)
        assert job is not None
        data = CheckpointData(step=step, checkpoint_uri=uri, metrics={"train_loss": loss})
        jobs.checkpoint(job, data, at=1000.0 + step)
        s.commit()
    return model


def _download(client: TestClient, tenant: TenantHandle, model: str, **params: str) -> Any:
    return client.get(f"/v1/models/{model}/content", params=params, headers=tenant.headers)


def _extract(r: Any, into: Path) -> Path:
    """The tar's one top folder, extracted under `into`."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-tar"
    assert int(r.headers["content-length"]) == len(r.content)
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        tops = {m.name.split("/")[0] for m in tar.getmembers()}
        assert len(tops) == 1, tops
        tar.extractall(into, filter="data")
    return into / tops.pop()


def _logits(model: Any, folder: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(folder)(TEXT, return_tensors="pt")
    with torch.no_grad():
        return torch.as_tensor(model(**encoded).logits)


def _error(r: Any) -> tuple[int, str | None]:
    return r.status_code, r.json()["error"]["param"]


def test_export_formats_cache_and_refusals(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    app_state: Any = client.app.state  # type: ignore[attr-defined]
    engine: Engine = app_state.engine
    models_dir: Path = app_state.settings.resolved_models_dir
    a, b = make_tenant(client, "export-a"), make_tenant(client, "export-b")
    job_id = create_job_ok(client, a, suffix="s", hyperparameters={"num_checkpoints_to_keep": 1})[
        "id"
    ]
    peft_model = _publish_model(engine, a, job_id, models_dir)
    model_id = f"ft:tiny-gpt2:export-a:s:{job_id}"
    merges: list[str] = []
    real_export = export_module.export_folder

    def counted(uri: str, source: str, task: str, fmt: str, md: Path, dest: Path) -> Path:
        merges.append(fmt)
        return real_export(uri, source, task, fmt, md, dest)

    monkeypatch.setattr(export_module, "export_folder", counted)

    # The default: the adapter as published.
    r = _download(client, a, model_id)
    safe = model_id.replace(":", "-")
    assert r.headers["content-disposition"] == f'attachment; filename="{safe}-adapter.tar"'
    adapter = _extract(r, tmp_path / "adapter")
    assert ADAPTER_FILES | {"tokenizer_config.json", MANIFEST_FILE} <= {
        p.name for p in adapter.iterdir()
    }
    assert json.loads((adapter / MANIFEST_FILE).read_text())["job_id"] == job_id

    # Merged: plain transformers loads it, and it answers as the adapter does.
    merged = _extract(_download(client, a, model_id, format="merged"), tmp_path / "merged")
    assert not {p.name for p in merged.iterdir()} & ADAPTER_FILES
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    torch.testing.assert_close(
        _logits(plain, merged), _logits(peft_model, merged), atol=1e-5, rtol=0
    )
    # Kept: a second download streams the same folder without merging again.
    again = _extract(_download(client, a, model_id, format="merged"), tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (merged / "model.safetensors").read_bytes()
    assert merges == ["adapter", "merged"]
    assert len(list((models_dir / "exports").iterdir())) == 1, "the merge is kept, nothing else"

    # A kept checkpoint: its weights are the checkpoint's, with the base model's tokenizer.
    ckpt_model = _report_checkpoint(engine, job_id, 1, 3.0, models_dir)
    checkpoint = f"{model_id}:ckpt-step-1"
    folder = _extract(_download(client, a, checkpoint, format="merged"), tmp_path / "ckpt")
    assert "tokenizer_config.json" in {p.name for p in folder.iterdir()}
    from_ckpt = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(
        _logits(from_ckpt, folder), _logits(ckpt_model, folder), atol=1e-5, rtol=0
    )

    # Refusals: another tenant's, a base model, an unknown format, an unknown model.
    assert _error(_download(client, b, model_id)) == (404, "model")
    assert _error(_download(client, b, checkpoint, format="merged")) == (404, "model")
    assert _error(_download(client, a, "tiny-gpt2")) == (400, "model")
    assert _error(_download(client, a, model_id, format="bogus")) == (400, "format")
    assert _error(_download(client, a, f"{model_id}x")) == (404, "model")
    # The models' own routes are still reached past the content route.
    assert client.get(f"/v1/models/{model_id}", headers=a.headers).json()["id"] == model_id

    # Retention removes the checkpoint (one kept, and step 2 is better): its kept merge is
    # not served, and goes.
    _report_checkpoint(engine, job_id, 2, 1.0, models_dir)
    r = _download(client, a, checkpoint, format="merged")
    assert _error(r) == (404, "model") and r.json()["error"]["code"] == "checkpoint_removed"
    # Deleted: not served from the kept merge either, which goes too.
    assert client.delete(f"/v1/models/{model_id}", headers=a.headers).status_code == 200
    assert _error(_download(client, a, model_id, format="merged")) == (404, "model")
    assert list((models_dir / "exports").iterdir()) == []


def _tar(path: Path, members: list[tuple[str, bytes | None, bytes]]) -> Path:
    """A tar of (name, link target or None, data) members."""
    with tarfile.open(path, "w") as tar:
        for name, link, data in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link.decode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_cli_extracts_the_top_folder_and_refuses_escaping_members(tmp_path: Path) -> None:
    good = _tar(tmp_path / "good.tar", [("m-merged/config.json", None, b"{}")])
    written = extract_model(good, tmp_path / "out")
    assert written == [tmp_path / "out" / "config.json"]
    assert written[0].read_bytes() == b"{}"
    for name, link in [("/etc/evil", None), ("m/../../evil", None), ("m/ln", b"/etc/passwd")]:
        bad = _tar(tmp_path / "bad.tar", [("m/config.json", None, b"{}"), (name, link, b"x")])
        with pytest.raises(UnsafeArchive):
            extract_model(bad, tmp_path / "refused")
        assert not (tmp_path / "refused").exists(), "nothing is written from a refused tar"

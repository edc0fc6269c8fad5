"""The published model of a job: ``{output_uri}/model``, what serving loads.

It holds the adapter (or the full model) as safetensors, the tokenizer, and
``tuneplane.json`` (`MANIFEST_FILE`: job, base model, task, labels, final metrics). A
plain job publishes its final checkpoint, a search its best trial's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from workers.data import load_tokenizer
from workers.spec import MANIFEST_FILE, JobSpec


def artifact_uri(spec: JobSpec) -> str:
    return spec.output_uri.rstrip("/") + "/model"


def manifest(spec: JobSpec, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": spec.job_id,
        "tenant_id": spec.tenant_id,
        "base_model": spec.base_model.model_dump(),
        "task": spec.task,
        "adapter": spec.adapter.type,
        "labels": spec.labels,
        # Serving encodes inputs with the same limit as training did.
        "max_length": spec.training.max_length,
        "metrics": metrics,
    }


def publish(spec: JobSpec, checkpoint_dir: Path, models_dir: str, metrics: dict[str, Any]) -> str:
    """Copies the final weights, the tokenizer and a manifest to ``{output_uri}/model``."""
    import fsspec

    target = artifact_uri(spec)
    with tempfile.TemporaryDirectory(prefix="tuneplane-artifact-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        for path in (checkpoint_dir / "model").iterdir():
            if path.is_file():
                (staging / path.name).write_bytes(path.read_bytes())
        load_tokenizer(spec.base_model.source, models_dir).save_pretrained(staging)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest(spec, metrics), indent=2))
        fs, path = fsspec.core.url_to_fs(target)
        if fs.exists(path):
            fs.rm(path, recursive=True)  # a rerun of the job replaces its artifact
        fs.makedirs(path, exist_ok=True)
        for file in sorted(staging.iterdir()):
            fs.put_file(str(file), f"{path}/{file.name}")
    return target

"""A fine-tuned model's weights as a folder its owner takes home (GET /v1/models/{id}/content).

Two formats:

- ``adapter``: the model's folder as published (`workers.publish`): for a LoRA model the
  adapter (``adapter_model.safetensors``, ``adapter_config.json``), the tokenizer and the
  manifest (``tuneplane.json``). A LoRA checkpoint's folder has no tokenizer (training
  saves it only with a whole model); the base model's is added, so every export carries one.
- ``merged``: the LoRA adapter folded into the base model's weights (peft's
  ``merge_and_unload``) and saved as a plain transformers model, with the tokenizer and the
  manifest: ``AutoModelForCausalLM.from_pretrained(folder)`` (or
  ``AutoModelForSequenceClassification`` for a classifier, whose config carries the job's
  labels) loads it without peft.

A full fine-tune is a whole model already: both formats give its folder as published.

Pure functions of an artifact URI and a base model source, with no Ray and no database:
the control plane calls them off its event loop, tests call them directly.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Final, Literal

from workers.data import load_tokenizer
from workers.sources import resolve_model_source
from workers.spec import MANIFEST_FILE

ExportFormat = Literal["adapter", "merged"]
EXPORT_FORMATS: Final[tuple[ExportFormat, ...]] = ("adapter", "merged")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Files of a LoRA folder that a merged model leaves behind (README.md: peft's model card).
ADAPTER_ONLY: Final[frozenset[str]] = frozenset({ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md"})
# What save_pretrained writes for any tokenizer; its absence means the folder has none.
TOKENIZER_CONFIG = "tokenizer_config.json"


class ExportError(ValueError):
    """An artifact that cannot be exported as asked (its message is for the user)."""


def is_lora(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _copy_files(source: Path, dest: Path) -> None:
    for path in sorted(source.iterdir()):
        if path.is_file():
            shutil.copyfile(path, dest / path.name)


def _fetched(artifact_uri: str, scratch: Path) -> Path:
    """A local folder holding the artifact: itself on a local store, else a copy in
    `scratch` (never cached: the caller's database decides whether it still exists)."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, path = fsspec.core.url_to_fs(artifact_uri)
    if isinstance(fs, LocalFileSystem):
        folder = Path(path)
    else:
        folder = scratch / "artifact"
        fs.get(path.rstrip("/") + "/", str(folder), recursive=True)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise ExportError(f"the model's weights are not in the artifact store ({artifact_uri})")
    return folder


def _merged_model(folder: Path, base_path: str, task: str) -> Any:
    """The base model with the adapter of `folder` merged in, as a plain transformers model.

    Loaded and merged in float32 (a bf16 merge would round the sum); cast back to the
    base's own half precision, if it has one, so the export is the base model's size."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    base: Any
    if task == "sequence_classification":
        labels = read_manifest(folder).get("labels") or []
        if not labels:
            raise ExportError("the classifier's manifest names no labels")
        # As training built it: a head sized to the job's labels (the adapter holds its
        # trained weights), and the labels in the config, so the merged model names them.
        base = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(str(x) for x in labels)),
            label2id={str(x): i for i, x in enumerate(labels)},
            ignore_mismatched_sizes=True,
            dtype=torch.float32,
        )
    else:
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    saved_dtype = getattr(AutoConfig.from_pretrained(base_path), "dtype", None)
    if saved_dtype in (torch.float16, torch.bfloat16):
        merged = merged.to(saved_dtype)
    return merged.eval()


def export_folder(
    artifact_uri: str,
    base_source: str,
    task: str,
    fmt: str,
    models_dir: Path,
    dest: Path,
) -> Path:
    """Writes the export of the model at `artifact_uri` (a published model's folder or a
    checkpoint's ``model/`` folder) into `dest` (created; must be empty) and returns it.

    `base_source` is the job's base model source (`workers.sources`), from which a merge
    loads the base weights and a LoRA checkpoint takes its tokenizer; `task` is the job's.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; one of {', '.join(EXPORT_FORMATS)}")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ExportError(f"{dest} is not empty")
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as scratch:
        folder = _fetched(artifact_uri, Path(scratch))
        if not is_lora(folder) or fmt == "adapter":
            _copy_files(folder, dest)
        else:
            base_path = resolve_model_source(base_source, models_dir)
            _merged_model(folder, base_path, task).save_pretrained(dest, safe_serialization=True)
            # The tokenizer's files and the manifest, as published; not the adapter, nor
            # peft's model card, which describes the adapter.
            written = {path.name for path in dest.iterdir()}
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.name not in ADAPTER_ONLY | written:
                    shutil.copyfile(path, dest / path.name)
        if not (dest / TOKENIZER_CONFIG).is_file():
            load_tokenizer(base_source, str(models_dir)).save_pretrained(dest)
    return dest

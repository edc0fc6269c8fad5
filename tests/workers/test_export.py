"""Exports of a fine-tuned model's weights (`workers.export`), on tiny real models: a merged
LoRA model loads with plain transformers and answers as the base model with its adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.workers.factories import make_spec
from workers.data import load_tokenizer
from workers.export import ExportError, export_folder
from workers.modeling import apply_lora, load_base_model
from workers.publish import manifest
from workers.sources import resolve_model_source
from workers.spec import MANIFEST_FILE, JobSpec, LoraAdapter

LABELS = ["animal", "colour", "fruit"]
TEXT = "red green blue apple cat"
ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json"}


def _trained_like(spec: JobSpec, models_dir: Path) -> Any:
    """The job's base model with its LoRA adapter (and a classifier's head), the adapter's
    weights drawn at random: a freshly made adapter is zero, so merged or not would tie."""
    source = resolve_model_source(spec.base_model.source, models_dir)
    assert isinstance(spec.adapter, LoraAdapter)
    torch.manual_seed(3)
    model = apply_lora(load_base_model(spec, source), spec, spec.adapter)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # the LoRA matrices, and a classifier's new head
                param.normal_(0.0, 0.2)
    return model.eval()


def _publish(model: Any, spec: JobSpec, models_dir: Path, out: Path, tokenizer: bool) -> Path:
    """The folder as the worker publishes it (a checkpoint's has no tokenizer)."""
    model.save_pretrained(out)
    if tokenizer:
        load_tokenizer(spec.base_model.source, str(models_dir)).save_pretrained(out)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest(spec, {"train_loss": 1.0})))
    return out


def _inputs(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(folder)(TEXT, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


@pytest.mark.parametrize("base", ["tiny-gpt2", "tiny-llama"])
def test_a_merged_causal_lm_loads_without_peft_and_gives_the_adapters_logits(
    base: str, models_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    spec = make_spec(tmp_path, base_model={"name": base, "source": f"tiny:{base}"})
    peft_model = _trained_like(spec, models_dir)
    artifact = _publish(peft_model, spec, models_dir, tmp_path / "artifact", tokenizer=True)

    merged = export_folder(
        artifact.as_uri(), spec.base_model.source, "causal_lm", "merged", models_dir,
        tmp_path / "merged",
    )  # fmt: skip

    names = {p.name for p in merged.iterdir()}
    assert not names & ADAPTER_FILES, names
    assert {"config.json", "model.safetensors", "tokenizer_config.json", MANIFEST_FILE} <= names
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert not hasattr(plain, "peft_config")
    inputs = _inputs(merged)
    with torch.no_grad():
        want = peft_model(**inputs).logits
        got = plain(**inputs).logits
        with peft_model.disable_adapter():
            unadapted = peft_model(**inputs).logits
    assert not torch.allclose(want, unadapted, atol=1e-3), "the adapter changes the logits"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert json.loads((merged / MANIFEST_FILE).read_text())["job_id"] == spec.job_id


def test_a_merged_classifier_carries_its_head_and_labels(models_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    spec = make_spec(
        tmp_path,
        base_model={"name": "tiny-bert", "source": "tiny:tiny-bert"},
        task="sequence_classification",
        data_format="classification",
        labels=LABELS,
    )
    peft_model = _trained_like(spec, models_dir)
    # A checkpoint's folder: no tokenizer; the export adds the base model's.
    artifact = _publish(peft_model, spec, models_dir, tmp_path / "checkpoint", tokenizer=False)

    merged = export_folder(
        str(artifact), spec.base_model.source, spec.task, "merged", models_dir, tmp_path / "out"
    )

    assert not {p.name for p in merged.iterdir()} & ADAPTER_FILES
    plain = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    assert plain.config.num_labels == len(LABELS)
    assert plain.config.id2label == dict(enumerate(LABELS))
    assert plain.config.label2id == {label: i for i, label in enumerate(LABELS)}
    inputs = _inputs(merged)
    with torch.no_grad():
        want = peft_model(**inputs).logits
        got = plain(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_the_adapter_format_is_the_folder_as_published(models_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    model = _trained_like(spec, models_dir)
    published = _publish(model, spec, models_dir, tmp_path / "published", tokenizer=True)
    checkpoint = _publish(model, spec, models_dir, tmp_path / "checkpoint", tokenizer=False)
    source = spec.base_model.source

    out = export_folder(published.as_uri(), source, "causal_lm", "adapter", models_dir,
                        tmp_path / "a")  # fmt: skip
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        p.name: p.read_bytes() for p in published.iterdir()
    }
    # A checkpoint's adapter comes with the base model's tokenizer.
    out = export_folder(str(checkpoint), source, "causal_lm", "adapter", models_dir,
                        tmp_path / "b")  # fmt: skip
    names = {p.name for p in out.iterdir()}
    assert ADAPTER_FILES | {"tokenizer_config.json", MANIFEST_FILE} <= names
    assert (out / "adapter_model.safetensors").read_bytes() == (
        checkpoint / "adapter_model.safetensors"
    ).read_bytes()


def test_a_full_fine_tune_exports_its_whole_folder_in_both_formats(
    models_dir: Path, tmp_path: Path
) -> None:
    whole = resolve_model_source("tiny:tiny-gpt2", models_dir)
    for fmt in ("adapter", "merged"):
        out = export_folder(whole, "tiny:tiny-gpt2", "causal_lm", fmt, models_dir, tmp_path / fmt)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == {
            p.name: p.read_bytes() for p in Path(whole).iterdir()
        }


def test_refusals(models_dir: Path, tmp_path: Path) -> None:
    whole = resolve_model_source("tiny:tiny-gpt2", models_dir)
    with pytest.raises(ExportError, match="format"):
        export_folder(whole, "tiny:tiny-gpt2", "causal_lm", "gguf", models_dir, tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="not in the artifact store"):
        export_folder(
            str(tmp_path / "empty"), "tiny:tiny-gpt2", "causal_lm", "adapter", models_dir,
            tmp_path / "y",
        )  # fmt: skip

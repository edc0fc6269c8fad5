"""The sequence classifier engine: a base classifier and its adapters, each adapter with
its own classification head, labels and max length (from the job's manifest).

Knows nothing of Ray, like the causal LM engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from workers.data import encode_classification, load_tokenizer
from workers.serving.adapters import AdapterHost, read_manifest
from workers.sources import resolve_model_source


class ClassifierEngine:
    """A sequence classifier and its adapters (each with its own head and labels)."""

    def __init__(self, source: str, models_dir: str, num_labels: int) -> None:
        from transformers import AutoModelForSequenceClassification

        path = resolve_model_source(source, Path(models_dir))
        self.tokenizer = load_tokenizer(source, models_dir)
        base = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, ignore_mismatched_sizes=True
        ).eval()
        self.host = AdapterHost(base)
        self.labels: dict[str | None, list[str]] = {None: [str(i) for i in range(num_labels)]}
        # Per adapter: the max_length its job trained with (the manifest's).
        self.max_lengths: dict[str | None, int] = {}
        self.default_max_length = int(
            min(getattr(self.tokenizer, "model_max_length", 512) or 512, 512)
        )
        config_labels = getattr(base.config, "id2label", None) or {}
        if len(config_labels) == num_labels:
            self.labels[None] = [str(config_labels[i]) for i in range(num_labels)]

    def load_adapter(self, name: str, directory: Path) -> None:
        manifest = read_manifest(directory)
        labels = manifest.get("labels")
        self.host.load(name, directory)
        if labels:
            self.labels[name] = [str(x) for x in labels]
        if manifest.get("max_length"):
            self.max_lengths[name] = int(manifest["max_length"])

    def unload_adapter(self, name: str) -> None:
        self.host.unload(name)
        self.labels.pop(name, None)
        self.max_lengths.pop(name, None)

    def classify(
        self, texts: Sequence[str], adapter: str | None
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """Labels and scores of each text, and each text's tokens (one forward pass)."""
        max_length = self.max_lengths.get(adapter, self.default_max_length)
        ids = encode_classification(self.tokenizer, texts, max_length)
        enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        logits = self._logits(enc, adapter)
        probs = torch.softmax(logits, dim=-1)
        labels = self.labels.get(adapter, self.labels[None])
        results = []
        for i, row in enumerate(probs):
            best = int(torch.argmax(row))
            results.append(
                {
                    "index": i,
                    "label": labels[best],
                    "score": float(row[best]),
                    "scores": {labels[j]: float(p) for j, p in enumerate(row)},
                }
            )
        return results, [int(n) for n in enc["attention_mask"].sum(dim=1)]

    def _logits(self, enc: Any, adapter: str | None) -> torch.Tensor:
        model = self.host.model
        logits: torch.Tensor
        with self.host.lock, torch.inference_mode():
            if model is self.host.base:
                logits = model(**enc).logits.float()
            elif adapter is None:
                with model.disable_adapter():
                    logits = model(**enc).logits.float()
            else:
                # One adapter per call: its classification head is its own module.
                model.set_adapter(adapter)
                logits = model(**enc).logits.float()
        return logits

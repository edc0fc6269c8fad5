"""Base models that tenants may fine-tune: the embedded offline set, or a JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from workers.spec import BaseModelRef, Task

CATALOG_CREATED = 1_767_225_600  # 2026-01-01: a stable "created" for base models


class CatalogEntry(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")
    # A local directory, a hub id (org/name), or "tiny:<name>" built offline by workers.tiny.
    source: str
    tasks: list[Task] = Field(min_length=1)
    architecture: str | None = None
    description: str = ""
    # Base learning rates that learning_rate_multiplier scales, per adapter type.
    learning_rate: dict[str, float] = Field(default_factory=lambda: {"lora": 2e-4, "full": 2e-5})
    max_length: int = Field(512, ge=8)

    def ref(self) -> BaseModelRef:
        return BaseModelRef(name=self.name, source=self.source, architecture=self.architecture)


EMBEDDED: list[CatalogEntry] = [
    CatalogEntry(
        name="tiny-gpt2",
        source="tiny:tiny-gpt2",
        tasks=["causal_lm"],
        architecture="gpt2",
        description="2-layer GPT-2 built offline; for tests and demos.",
        learning_rate={"lora": 3e-3, "full": 1e-3},
        max_length=128,
    ),
    CatalogEntry(
        name="tiny-llama",
        source="tiny:tiny-llama",
        tasks=["causal_lm"],
        architecture="llama",
        description="2-layer Llama built offline; for tests and demos.",
        learning_rate={"lora": 3e-3, "full": 1e-3},
        max_length=128,
    ),
    CatalogEntry(
        name="tiny-bert",
        source="tiny:tiny-bert",
        tasks=["sequence_classification"],
        architecture="bert",
        description="2-layer BERT encoder built offline; for classification tests and demos.",
        learning_rate={"lora": 3e-3, "full": 1e-3},
        max_length=128,
    ),
]


class Catalog:
    def __init__(self, entries: list[CatalogEntry]) -> None:
        self._entries = {e.name: e for e in entries}

    @classmethod
    def load(cls, path: Path | None) -> Catalog:
        if path is None:
            return cls(EMBEDDED)
        raw = json.loads(path.read_text())
        items = raw["models"] if isinstance(raw, dict) else raw
        return cls([CatalogEntry.model_validate(item) for item in items])

    def get(self, name: str) -> CatalogEntry | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[CatalogEntry]:
        return [self._entries[n] for n in self.names()]

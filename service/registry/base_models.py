"""Base models as data: admins register, list and delete them; every tenant sees them.

Registration validates the source first (`validation.inspect_source`). Deleting one only
unregisters it: no new job can start from it, but the jobs, fine-tuned models and
deployments made from it carry its source in their own spec and keep working, and its
files (an admin's directory, the hub cache, a storage prefix) are never deleted by us.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from sqlmodel import Session

from service.common import now
from service.errors import BadRequest, Conflict, PermissionDenied, or_not_found
from service.models import RegisteredBaseModel
from service.registry.catalog import Catalog, CatalogEntry
from service.registry.repository import BaseModelRepository, registered_entry
from service.registry.schemas import BaseModelCreate, BaseModelList, BaseModelOut, LearningRates
from service.registry.service import BASE_OWNER
from service.registry.validation import ModelRejected, inspect_source
from service.schemas import shown

T = TypeVar("T")


def base_model_detail(entry: CatalogEntry) -> BaseModelOut:
    return shown(BaseModelOut, entry, id=entry.name, owned_by=BASE_OWNER)


def _found(found: T | None, name: str) -> T:
    return or_not_found(found, f"No base model '{name}'.", param="name", code="model_not_found")


class BaseModelService:
    def __init__(self, session: Session, builtin: Catalog, cache: Path) -> None:
        self.repo = BaseModelRepository(session)
        self.builtin = builtin
        self.cache = cache

    def list(self) -> BaseModelList:
        entries = self.repo.catalog(self.builtin).entries()
        return BaseModelList(data=[base_model_detail(e) for e in entries])

    def get(self, name: str) -> BaseModelOut:
        return base_model_detail(_found(self.repo.catalog(self.builtin).get(name), name))

    def register(self, body: BaseModelCreate) -> BaseModelOut:
        if self.builtin.get(body.name) is not None or self.repo.get(body.name) is not None:
            raise Conflict(
                f"A base model named '{body.name}' exists already.",
                param="name",
                code="model_exists",
            )
        try:
            found = inspect_source(body.source, self.cache)
        except ModelRejected as exc:
            raise BadRequest(str(exc), param=exc.param, code="invalid_model") from None
        tasks = body.tasks or found.default_tasks
        for task in tasks:
            if task not in found.supported:
                raise BadRequest(
                    f"Architecture '{found.architecture}' has no {task} head in transformers; "
                    f"it supports {', '.join(sorted(found.supported))}.",
                    param="tasks",
                    code="invalid_model",
                )
        if body.chat and not found.chat_template:
            raise BadRequest(
                f"The tokenizer of '{body.source}' has no chat template, so the model cannot "
                "take chat data: add one to its tokenizer_config.json, or register it with "
                "chat=false to train it on prompt/completion and text data.",
                param="chat",
                code="invalid_model",
            )
        if body.max_length is not None and body.max_length > found.max_length:
            raise BadRequest(
                f"max_length {body.max_length} is over the model's limit of {found.max_length}.",
                param="max_length",
                code="invalid_model",
            )
        rates = body.learning_rate or LearningRates()
        row = RegisteredBaseModel(
            name=body.name,
            source=body.source,
            tasks=list(tasks),
            architecture=found.architecture,
            description=body.description,
            learning_rate={"lora": rates.lora, "full": rates.full},
            max_length=body.max_length or found.max_length,
            chat=found.chat_template if body.chat is None else body.chat,
            created_at=now(),
        )
        self.repo.add(row)
        return base_model_detail(registered_entry(row))

    def delete(self, name: str) -> BaseModelOut:
        if self.builtin.get(name) is not None:
            raise PermissionDenied(
                f"'{name}' is built into this deployment (its catalog); it cannot be deleted.",
                param="name",
            )
        row = _found(self.repo.get(name), name)
        out = base_model_detail(registered_entry(row))
        self.repo.delete(row)
        return out

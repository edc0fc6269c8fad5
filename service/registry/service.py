"""Models a tenant can see: the catalog's base models and its own fine-tuned models."""

from __future__ import annotations

from collections.abc import Callable

from sqlmodel import Session

from service.common import now
from service.db import on_commit
from service.deployments.repository import DeploymentRepository
from service.errors import PermissionDenied, or_not_found
from service.models import FineTunedModel
from service.registry.catalog import Catalog, CatalogEntry
from service.registry.repository import ModelRepository
from service.registry.schemas import ModelDeleted, ModelList, ModelOut

BASE_OWNER = "tuneplane"


def base_model_out(entry: CatalogEntry) -> ModelOut:
    return ModelOut(
        id=entry.name,
        created=entry.created,
        owned_by=BASE_OWNER,
        task=entry.tasks[0],
        description=entry.description,
    )


def fine_tuned_out(model: FineTunedModel, owner: str) -> ModelOut:
    return ModelOut(
        id=model.id,
        created=int(model.created_at),
        owned_by=owner,
        task=model.task,
        base_model=model.base_model,
        fine_tuning_job=model.job_id,
        adapter=model.adapter_type,
    )


def fine_tuned_model_id(base: str, tenant_name: str, suffix: str | None, job_id: str) -> str:
    return f"ft:{base}:{tenant_name}:{suffix or ''}:{job_id}"


class ModelService:
    def __init__(
        self,
        session: Session,
        tenant_id: str,
        catalog: Catalog,
        on_serving_change: Callable[[], None] | None = None,
    ) -> None:
        self.repo = ModelRepository(session, tenant_id)
        self.deployments = DeploymentRepository(session, tenant_id)
        self.on_serving_change = on_serving_change
        self.session = session
        self.tenant_id = tenant_id
        self.catalog = catalog

    def list(self) -> ModelList:
        base = [base_model_out(e) for e in self.catalog.entries()]
        return ModelList(data=base + [fine_tuned_out(m, self.tenant_id) for m in self.repo.live()])

    def get(self, model_id: str) -> ModelOut:
        entry = self.catalog.get(model_id)
        if entry is not None:
            return base_model_out(entry)
        model = self._live(model_id)
        return fine_tuned_out(model, self.tenant_id)

    def _live(self, model_id: str) -> FineTunedModel:
        return or_not_found(
            self.repo.get_live(model_id), f"The model '{model_id}' does not exist.", param="model"
        )

    def delete(self, model_id: str) -> ModelDeleted:
        if self.catalog.get(model_id) is not None:
            raise PermissionDenied(
                f"'{model_id}' is a base model; only fine-tuned models can be deleted.",
                param="model",
            )
        model = self._live(model_id)
        model.deleted_at = now()
        self.session.add(model)
        # A deleted model is no longer served: its deployment goes with it.
        deployment = self.deployments.for_model(model.id)
        if deployment is not None:
            self.deployments.delete(deployment)
        self.session.flush()
        if self.on_serving_change is not None:
            on_commit(self.session, self.on_serving_change)
        return ModelDeleted(id=model.id)

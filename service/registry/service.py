"""Models a tenant can see: the catalog's base models and its own fine-tuned models.

Its jobs' kept checkpoints (`service.registry.checkpoints`) are models too when named, as
OpenAI's are: GET /v1/models/{id} shows one; the list leaves them out, as OpenAI's does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlmodel import Session

from service.common import now
from service.db import on_commit
from service.deployments.repository import DeploymentRepository
from service.errors import BadRequest, Conflict, NotFound, PermissionDenied
from service.inference.admission import invalidate_admissions
from service.models import FineTunedModel
from service.registry.catalog import Catalog, CatalogEntry
from service.registry.repository import ModelRepository
from service.registry.schemas import ModelDeleted, ModelList, ModelOut
from service.storage import ArtifactStore

log = logging.getLogger(__name__)
BASE_OWNER = "tuneplane"
_MISSING = "The model '{}' does not exist."


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
        parent=model.parent,
    )


# A lineage longer than this is cut (it cannot loop: a parent exists before its child).
MAX_LINEAGE = 64


def lineage(repo: ModelRepository, model: FineTunedModel) -> list[str]:
    """The chain a model descends from: its base model first, its parent last."""
    chain: list[str] = []
    parent = model.parent
    while parent is not None and len(chain) < MAX_LINEAGE and parent not in chain:
        chain.append(parent)
        parent = repo.parent_of(parent)
    return [model.base_model, *reversed(chain)]


def fine_tuned_model_id(base: str, tenant_name: str, suffix: str | None, job_id: str) -> str:
    return f"ft:{base}:{tenant_name}:{suffix or ''}:{job_id}"


def model_not_found(
    repo: ModelRepository, model_id: str, message: str, code: str = "model_not_found"
) -> NotFound:
    """A 404 naming `model` (`message`, `code`); for a checkpoint retention removed, one
    that says so."""
    if repo.removed_by_retention(model_id):
        return NotFound(
            f"The checkpoint '{model_id}' was removed by checkpoint retention (its job keeps "
            "its last num_checkpoints_to_keep checkpoints and its best); use a checkpoint "
            "its job still lists, or its fine-tuned model.",
            param="model",
            code="checkpoint_removed",
        )
    return NotFound(message, param="model", code=code)


def weights_users(repo: ModelRepository, model: FineTunedModel) -> list[str]:
    """What still needs `model`'s weights: unfinished jobs that continue from it or train
    on its folder, and (a full model) live models whose base is its folder."""
    users = []
    for job in repo.unfinished_jobs():
        spec = job.spec or {}
        init = spec.get("init_from") or {}
        source = (spec.get("base_model") or {}).get("source")
        if model.id == init.get("model") or model.artifact_uri in (init.get("uri"), source):
            users.append(job.id)
    if model.adapter_type == "full":
        for other, job in repo.live_with_jobs():
            source = ((job.spec or {}).get("base_model") or {}).get("source")
            if other.id != model.id and source == model.artifact_uri:
                users.append(other.id)
    return users


class ModelService:
    def __init__(
        self,
        session: Session,
        tenant_id: str,
        catalog: Catalog,
        on_serving_change: Callable[[], None] | None = None,
        store: ArtifactStore | None = None,
    ) -> None:
        # `store`: where a deleted model's weights are removed from (None: they stay).
        self.store = store
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
        # A fine-tuned model, or a checkpoint of one of the tenant's jobs.
        found = self.repo.servable_with_job(model_id)
        if found is None:
            raise model_not_found(self.repo, model_id, _MISSING.format(model_id), "not_found")
        out = fine_tuned_out(found[0], self.tenant_id)
        out.lineage = lineage(self.repo, found[0])
        return out

    def _live(self, model_id: str) -> FineTunedModel:
        model = self.repo.get_live(model_id)
        if model is not None:
            return model
        if self.repo.checkpoint_with_job(model_id) is not None:
            raise BadRequest(
                f"'{model_id}' is a checkpoint; checkpoints are not deleted one by one: "
                "checkpoint retention removes a job's older ones (see the job's "
                "num_checkpoints_to_keep).",
                param="model",
                code="checkpoint_not_deletable",
            )
        raise model_not_found(self.repo, model_id, _MISSING.format(model_id), "not_found")

    def delete(self, model_id: str) -> ModelDeleted:
        if self.catalog.get(model_id) is not None:
            raise PermissionDenied(
                f"'{model_id}' is a base model; only fine-tuned models can be deleted.",
                param="model",
            )
        model = self._live(model_id)
        users = weights_users(self.repo, model)
        if users:
            shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
            raise Conflict(
                f"'{model_id}' cannot be deleted while {shown} still use its weights: wait "
                "for those jobs to end, or delete those models first.",
                param="model",
                code="model_in_use",
            )
        model.deleted_at = now()
        self.session.add(model)
        # Its weights go with it, once the deletion is committed.
        on_commit(self.session, lambda: self._remove_weights(model))
        # A deleted model is no longer served: its deployment goes with it.
        deployment = self.deployments.for_model(model.id)
        if deployment is not None:
            self.deployments.delete(deployment)
        self.session.flush()
        # No longer routed from the commit on, not once its kept admissions expire.
        on_commit(self.session, invalidate_admissions)
        if self.on_serving_change is not None:
            on_commit(self.session, self.on_serving_change)
        return ModelDeleted(id=model.id)

    def _remove_weights(self, model: FineTunedModel) -> None:
        if self.store is None:
            return
        try:
            removed = self.store.delete_uri(model.artifact_uri)
        except OSError:
            # The model is deleted; its bytes are an operator's to remove by hand.
            log.warning(
                "could not remove the weights of deleted model %s at %s",
                model.id,
                model.artifact_uri,
                exc_info=True,
            )
            return
        if not removed:
            log.info("deleted model %s: its weights at %s are outside the artifact store; "
                     "left in place", model.id, model.artifact_uri)  # fmt: skip

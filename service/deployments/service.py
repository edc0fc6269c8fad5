"""Deployments: a tenant's serving policy per fine-tuned model (or job checkpoint)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from service.common import known_page, new_id, now
from service.db import on_commit
from service.deployments.repository import DeploymentRepository
from service.deployments.schemas import (
    DeploymentCreate,
    DeploymentDeleted,
    DeploymentList,
    DeploymentOut,
    DeploymentUpdate,
)
from service.deployments.serving import ServingManager, route_of
from service.errors import BadRequest, Conflict, or_not_found
from service.models import Deployment, FineTunedModel, Job
from service.models.status import DeploymentStatus
from service.ray_backend import ServeAppStatus
from service.registry.repository import ModelRepository
from service.registry.service import model_not_found
from service.schemas import shown


def live_status(live: ServeAppStatus | None) -> DeploymentStatus:
    """A deployment's status from its Serve application's (the adapters of one base model
    share theirs)."""
    if live is None:
        return DeploymentStatus.NOT_DEPLOYED
    if live.status in ("DEPLOY_FAILED", "UNHEALTHY"):
        return DeploymentStatus.FAILED
    if live.status == "RUNNING":
        return (
            DeploymentStatus.RUNNING if live.running_replicas else DeploymentStatus.SCALED_TO_ZERO
        )
    return DeploymentStatus.DEPLOYING


def _exists(model: str) -> Conflict:
    return Conflict(
        f"The model '{model}' has a deployment already; update it instead.",
        param="model",
        code="deployment_exists",
    )


class DeploymentService:
    def __init__(self, session: Session, tenant_id: str, serving: ServingManager) -> None:
        self.session = session
        self.repo = DeploymentRepository(session, tenant_id)
        self.models = ModelRepository(session, tenant_id)
        self.serving = serving

    def _out(self, d: Deployment) -> DeploymentOut:
        live = self._live(d.model)
        return shown(
            DeploymentOut,
            d,
            status=live_status(live),
            running_replicas=live.running_replicas if live is not None else 0,
            created_at=int(d.created_at),
            updated_at=int(d.updated_at),
        )

    def _live(self, model_id: str) -> ServeAppStatus | None:
        """What Serve says of the model's application; None where it runs none."""
        found = self.models.servable_with_job(model_id)
        if found is None:
            return None
        try:
            return self.serving.status().get(route_of(*found)[0].app)
        except Exception:  # Serve unreachable: report what is known
            return None

    def _get(self, deployment_id: str) -> Deployment:
        return or_not_found(
            self.repo.get(deployment_id),
            f"No deployment '{deployment_id}'.",
            param="deployment_id",
        )

    def create(self, body: DeploymentCreate) -> Deployment:
        # A fine-tuned model or a kept checkpoint of one of the tenant's jobs.
        found = self.models.servable_with_job(body.model)
        if found is None:
            raise model_not_found(
                self.models,
                body.model,
                f"The model '{body.model}' does not exist; deployments serve fine-tuned "
                "models and their jobs' checkpoints.",
            )
        self._check_engine(*found, body.engine)
        if self.repo.for_model(body.model) is not None:
            raise _exists(body.model)
        t = now()
        # The body is the policy, field for field.
        deployment = Deployment(
            id=new_id("dep"),
            tenant_id=self.repo.tenant_id,
            **body.model_dump(),
            created_at=t,
            updated_at=t,
        )
        try:
            with self.session.begin_nested():
                self.repo.add(deployment)
        except IntegrityError:  # a concurrent create of the same model won
            raise _exists(body.model) from None
        self._changed()
        return deployment

    def show(self, deployment: Deployment) -> DeploymentOut:
        return self._out(deployment)

    def get(self, deployment_id: str) -> DeploymentOut:
        return self._out(self._get(deployment_id))

    def list(self, after: str | None, limit: int) -> DeploymentList:
        page = known_page(self.repo.list_page(after, limit), after, "deployment")
        return DeploymentList.of(page, self._out)

    def update(self, deployment_id: str, body: DeploymentUpdate) -> Deployment:
        d = self._get(deployment_id)
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        low = changes.get("min_replicas", d.min_replicas)
        high = changes.get("max_replicas", d.max_replicas)
        if high < low:
            raise BadRequest(
                f"max_replicas ({high}) must be at least min_replicas ({low}).",
                param="max_replicas",
            )
        if "engine" in changes:
            found = self.models.servable_with_job(d.model)
            if found is not None:
                self._check_engine(*found, changes["engine"])
        for key, value in changes.items():
            setattr(d, key, value)
        d.updated_at = now()
        self.session.add(d)
        self.session.flush()
        self._changed()
        return d

    def delete(self, deployment_id: str) -> DeploymentDeleted:
        d = self._get(deployment_id)
        self.repo.delete(d)
        self._changed()
        return DeploymentDeleted(id=d.id)

    def _check_engine(self, model: FineTunedModel, job: Job, engine: str) -> None:
        """A model the engine it asks for cannot serve is refused now, not when a replica
        fails: classifiers run on transformers only, and vLLM makes room for adapters up to
        the cluster's `serve_max_lora_rank`."""
        settings = self.serving.settings
        if (settings.serve_engine if engine == "auto" else engine) != "vllm":
            return
        if model.task != "causal_lm":
            raise BadRequest(
                f"The model '{model.id}' is a classifier; classifiers are served by the "
                "transformers engine only (engine 'hf' or 'auto').",
                param="engine",
                code="engine_not_supported",
            )
        adapter = (job.spec or {}).get("adapter") or {}
        rank = int(adapter.get("r") or 0) if adapter.get("type") in ("lora", "qlora") else 0
        if rank > settings.serve_max_lora_rank:
            raise BadRequest(
                f"The model '{model.id}' is a LoRA adapter of rank {rank}; vLLM here makes "
                f"room for rank {settings.serve_max_lora_rank} at most "
                "(TUNEPLANE_SERVE_MAX_LORA_RANK). Use engine 'hf', or raise the limit.",
                param="engine",
                code="adapter_rank_too_large",
            )

    def _changed(self) -> None:
        # Serve follows the database once the change is committed.
        on_commit(self.session, self.serving.apply_soon)

"""Deployments: a tenant's serving policy per fine-tuned model."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from service.common import new_id, now
from service.db import on_commit
from service.deployments.repository import DeploymentRepository
from service.deployments.schemas import (
    DeploymentCreate,
    DeploymentDeleted,
    DeploymentList,
    DeploymentOut,
    DeploymentStatus,
    DeploymentUpdate,
)
from service.deployments.serving import ServingManager, route_of
from service.errors import BadRequest, Conflict, NotFound
from service.models import Deployment
from service.registry.repository import ModelRepository


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
        status: DeploymentStatus = "not_deployed"
        running = 0
        found = self.models.get_live_with_job(d.model)
        if found is not None:
            app = route_of(*found)[0].app
            try:
                live = self.serving.status().get(app)
            except Exception:  # Serve unreachable: report what is known
                live = None
            if live is not None:
                running = live.running_replicas
                if live.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    status = "failed"
                elif live.status == "RUNNING":
                    status = "running" if running else "scaled_to_zero"
                else:
                    status = "deploying"
        return DeploymentOut(
            id=d.id,
            model=d.model,
            min_replicas=d.min_replicas,
            max_replicas=d.max_replicas,
            target_ongoing_requests=d.target_ongoing_requests,
            status=status,
            running_replicas=running,
            created_at=int(d.created_at),
            updated_at=int(d.updated_at),
        )

    def _get(self, deployment_id: str) -> Deployment:
        found = self.repo.get(deployment_id)
        if found is None:
            raise NotFound(f"No deployment '{deployment_id}'.", param="deployment_id")
        return found

    def create(self, body: DeploymentCreate) -> Deployment:
        if self.models.get_live(body.model) is None:
            raise NotFound(
                f"The model '{body.model}' does not exist; deployments serve fine-tuned models.",
                param="model",
                code="model_not_found",
            )
        if self.repo.for_model(body.model) is not None:
            raise _exists(body.model)
        t = now()
        deployment = Deployment(
            id=new_id("dep"),
            tenant_id=self.repo.tenant_id,
            model=body.model,
            min_replicas=body.min_replicas,
            max_replicas=body.max_replicas,
            target_ongoing_requests=body.target_ongoing_requests,
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
        page = self.repo.list_page(after, limit)
        if page is None:
            raise BadRequest(f"No deployment '{after}' to page after.", param="after")
        return DeploymentList(data=[self._out(d) for d in page.items], has_more=page.has_more)

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

    def _changed(self) -> None:
        # Serve follows the database once the change is committed.
        on_commit(self.session, self.serving.apply_soon)

from __future__ import annotations

from sqlmodel import Session, col, select

from service.common import Page
from service.models import Checkpoint, Deployment, FineTunedModel, Job
from service.registry.checkpoints import as_model
from service.repository import ScopedRepository


class DeploymentRepository(ScopedRepository[Deployment]):
    model = Deployment

    def for_model(self, model_id: str) -> Deployment | None:
        return self.session.exec(self._select().where(Deployment.model == model_id)).first()

    def list_page(self, after: str | None, limit: int) -> Page[Deployment] | None:
        return self.page(self._select(), after, limit)

    def delete(self, deployment: Deployment) -> None:
        self.session.delete(deployment)
        self.session.flush()


class ServingRepository:
    """What Serve must run, across all tenants: read only by the serving manager, which
    serves every tenant's models and never answers a tenant with these rows."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def live_models(self) -> list[tuple[FineTunedModel, Job]]:
        stmt = (
            select(FineTunedModel, Job)
            .join(Job, col(Job.id) == col(FineTunedModel.job_id))
            .where(col(FineTunedModel.deleted_at).is_(None))
        )
        return [(m, j) for m, j in self.session.exec(stmt)]

    def checkpoint_models(self) -> list[tuple[FineTunedModel, Job]]:
        """Every kept checkpoint (retention deletes the rows of removed ones), described
        as a model of its job."""
        stmt = select(Checkpoint, Job).join(Job, col(Job.id) == col(Checkpoint.job_id))
        return [(as_model(c, j), j) for c, j in self.session.exec(stmt)]

    def deployments(self) -> list[Deployment]:
        return list(self.session.exec(select(Deployment)))

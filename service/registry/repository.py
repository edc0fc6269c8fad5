from __future__ import annotations

from sqlmodel import col, select

from service.models import FineTunedModel, Job
from service.repository import ScopedRepository


class ModelRepository(ScopedRepository[FineTunedModel]):
    model = FineTunedModel

    def live(self) -> list[FineTunedModel]:
        stmt = self._select().where(col(FineTunedModel.deleted_at).is_(None))
        return list(self.session.exec(stmt.order_by(col(FineTunedModel.created_at))))

    def get_live(self, model_id: str) -> FineTunedModel | None:
        found = self.get(model_id)
        return found if found is not None and found.deleted_at is None else None

    def get_live_with_job(self, model_id: str) -> tuple[FineTunedModel, Job] | None:
        """The live model and the job that made it, in one query (the inference hot path)."""
        stmt = (
            select(FineTunedModel, Job)
            .join(Job, col(Job.id) == col(FineTunedModel.job_id))
            .where(
                col(FineTunedModel.tenant_id) == self.tenant_id,
                col(Job.tenant_id) == self.tenant_id,
                col(FineTunedModel.id) == model_id,
                col(FineTunedModel.deleted_at).is_(None),
            )
        )
        found = self.session.exec(stmt).first()
        return (found[0], found[1]) if found is not None else None

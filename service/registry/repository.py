from __future__ import annotations

from sqlmodel import col

from service.models import FineTunedModel
from service.repository import ScopedRepository


class ModelRepository(ScopedRepository[FineTunedModel]):
    model = FineTunedModel

    def live(self) -> list[FineTunedModel]:
        stmt = self._select().where(col(FineTunedModel.deleted_at).is_(None))
        return list(self.session.exec(stmt.order_by(col(FineTunedModel.created_at))))

    def get_live(self, model_id: str) -> FineTunedModel | None:
        found = self.get(model_id)
        return found if found is not None and found.deleted_at is None else None

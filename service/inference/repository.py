"""The inference hot path's one read: the key, its tenant and the named model together.

Each query costs a few hundred microseconds of SQLAlchemy on a small machine, more than
the database takes to answer it, and every inference request paid three (the key, the
tenant's quotas, the model and its job): one query answers all three.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, bindparam
from sqlmodel import Session, col, select

from service.models import ApiKey, FineTunedModel, Job, Tenant


@dataclass(frozen=True)
class KeyAndModel:
    key: ApiKey
    # The key's tenant (its quotas); None only if the row is gone.
    tenant: Tenant | None
    # The live fine-tuned model of that name and its job; None for anything else (a kept
    # checkpoint, a base model, nothing), which the slower lookups tell apart.
    model: tuple[FineTunedModel, Job] | None


# Built once: composing a statement costs more than running it from SQLAlchemy's cache.
_MODEL_ON = and_(
    col(FineTunedModel.tenant_id) == col(ApiKey.tenant_id),
    col(FineTunedModel.id) == bindparam("model_id"),
    col(FineTunedModel.deleted_at).is_(None),
)
_JOB_ON = and_(
    col(Job.id) == col(FineTunedModel.job_id), col(Job.tenant_id) == col(ApiKey.tenant_id)
)
_KEY_AND_MODEL = (
    select(ApiKey, Tenant, FineTunedModel, Job)
    .outerjoin(Tenant, col(Tenant.id) == col(ApiKey.tenant_id))
    .outerjoin(FineTunedModel, _MODEL_ON)
    .outerjoin(Job, _JOB_ON)
    .where(col(ApiKey.key_hash) == bindparam("key_hash"), col(ApiKey.revoked_at).is_(None))
)


class InferenceRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def key_and_model(self, key_hash: str, model_id: str | None) -> KeyAndModel | None:
        """The unrevoked key with this hash, its tenant and, when `model_id` names one of
        that tenant's live models, the model and its job; None when there is no such key."""
        params = {"key_hash": key_hash, "model_id": model_id or ""}
        found = self.session.exec(_KEY_AND_MODEL, params=params).first()
        if found is None:
            return None
        key, tenant, model, job = found
        pair = (model, job) if model is not None and job is not None else None
        return KeyAndModel(key, tenant, pair)

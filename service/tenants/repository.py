"""Tenants and keys are the admin's objects: these queries are deliberately unscoped."""

from __future__ import annotations

from sqlmodel import Session, col, select

from service.models import ApiKey, Tenant


class TenantRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, tenant_id: str) -> Tenant | None:
        return self.session.get(Tenant, tenant_id)

    def by_name(self, name: str) -> Tenant | None:
        return self.session.exec(select(Tenant).where(Tenant.name == name)).first()

    def all(self) -> list[Tenant]:
        return list(self.session.exec(select(Tenant).order_by(col(Tenant.created_at))))

    def add(self, obj: Tenant | ApiKey) -> None:
        self.session.add(obj)
        self.session.flush()

    def keys(self, tenant_id: str) -> list[ApiKey]:
        stmt = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(col(ApiKey.created_at))
        return list(self.session.exec(stmt))

    def key(self, tenant_id: str, key_id: str) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.id == key_id)
        return self.session.exec(stmt).first()

    def live_key(self, key_hash: str) -> ApiKey | None:
        """The unrevoked key with this hash (authentication's one query)."""
        stmt = select(ApiKey).where(ApiKey.key_hash == key_hash, col(ApiKey.revoked_at).is_(None))
        return self.session.exec(stmt).first()

    def names(self) -> dict[str, str]:
        return {t.id: t.name for t in self.all()}

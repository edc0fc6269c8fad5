from __future__ import annotations

from collections.abc import Iterable

from sqlmodel import Session, col, select

from service.models import TenantSecret


class SecretRepository:
    """A tenant's secrets; no method can see another tenant's."""

    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def get(self, name: str) -> TenantSecret | None:
        return self.session.get(TenantSecret, (self.tenant_id, name))

    def all(self) -> list[TenantSecret]:
        stmt = (
            select(TenantSecret)
            .where(TenantSecret.tenant_id == self.tenant_id)
            .order_by(col(TenantSecret.name))
        )
        return list(self.session.exec(stmt))

    def named(self, names: Iterable[str]) -> dict[str, str]:
        """The values of those of `names` the tenant has set."""
        wanted = list(names)
        if not wanted:
            return {}
        stmt = select(TenantSecret).where(
            TenantSecret.tenant_id == self.tenant_id, col(TenantSecret.name).in_(wanted)
        )
        return {s.name: s.value for s in self.session.exec(stmt)}

    def put(self, secret: TenantSecret) -> TenantSecret:
        if secret.tenant_id != self.tenant_id:
            raise ValueError("secret belongs to another tenant")
        self.session.add(secret)
        self.session.flush()
        return secret

    def delete(self, secret: TenantSecret) -> None:
        self.session.delete(secret)
        self.session.flush()

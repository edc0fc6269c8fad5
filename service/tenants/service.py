"""Tenant and API-key rules."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from service.auth import generate_key, hash_key
from service.common import new_id, now
from service.config import Quotas, Settings
from service.db import on_commit
from service.errors import Conflict, or_not_found
from service.inference.admission import invalidate_admissions
from service.models import ApiKey, Tenant
from service.schemas import shown
from service.tenants.repository import TenantRepository
from service.tenants.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyOut,
    TenantCreate,
    TenantCreated,
    TenantList,
    TenantOut,
    TenantUpdate,
)


def effective_quotas(tenant: Tenant, settings: Settings) -> Quotas:
    own = Quotas.model_validate(tenant.quotas or {})
    merged = settings.default_quotas.model_dump()
    merged.update(own.model_dump(exclude_unset=True))
    return Quotas.model_validate(merged)


def tenant_out(tenant: Tenant, settings: Settings) -> TenantOut:
    quotas = effective_quotas(tenant, settings)
    return shown(TenantOut, tenant, quotas=quotas, created_at=int(tenant.created_at))


def key_out(key: ApiKey) -> ApiKeyOut:
    revoked = int(key.revoked_at) if key.revoked_at is not None else None
    return shown(ApiKeyOut, key, created_at=int(key.created_at), revoked_at=revoked)


class TenantService:
    def __init__(self, session: Session, settings: Settings) -> None:
        self.repo = TenantRepository(session)
        self.session = session
        self.settings = settings

    def _tenant(self, tenant_id: str) -> Tenant:
        return or_not_found(
            self.repo.get(tenant_id), f"No tenant with id '{tenant_id}'.", param="tenant_id"
        )

    def _new_key(self, tenant_id: str, name: str | None) -> tuple[ApiKey, str]:
        token = generate_key()
        key = ApiKey(
            id=new_id("key"),
            tenant_id=tenant_id,
            name=name,
            key_hash=hash_key(token),
            prefix=token[:8],
            created_at=now(),
        )
        self.repo.add(key)
        return key, token

    def create(self, body: TenantCreate) -> TenantCreated:
        if self.repo.by_name(body.name) is not None:
            raise Conflict(f"A tenant named '{body.name}' already exists.", param="name")
        tenant = Tenant(
            id=new_id("tenant"),
            name=body.name,
            weight=body.weight,
            quotas=body.quotas.model_dump(exclude_unset=True) if body.quotas else None,
            created_at=now(),
        )
        try:
            self.repo.add(tenant)
        except IntegrityError:
            # Lost a race with a concurrent create of the same name.
            raise Conflict(f"A tenant named '{body.name}' already exists.", param="name") from None
        _, token = self._new_key(tenant.id, "default")
        return TenantCreated(tenant=tenant_out(tenant, self.settings), api_key=token)

    def list_tenants(self) -> TenantList:
        return TenantList(data=[tenant_out(t, self.settings) for t in self.repo.all()])

    def get(self, tenant_id: str) -> TenantOut:
        return tenant_out(self._tenant(tenant_id), self.settings)

    def update(self, tenant_id: str, body: TenantUpdate) -> TenantOut:
        tenant = self._tenant(tenant_id)
        if body.weight is not None:
            tenant.weight = body.weight
        if body.quotas is not None:
            quotas = dict(tenant.quotas or {})
            quotas.update(body.quotas.model_dump(exclude_unset=True))
            tenant.quotas = quotas
        self.session.add(tenant)
        self.session.flush()
        # Its rate limit is kept with its admissions.
        on_commit(self.session, invalidate_admissions)
        return tenant_out(tenant, self.settings)

    def create_key(self, tenant_id: str, body: ApiKeyCreate) -> ApiKeyCreated:
        self._tenant(tenant_id)
        key, token = self._new_key(tenant_id, body.name)
        return ApiKeyCreated(**key_out(key).model_dump(), key=token)

    def list_keys(self, tenant_id: str) -> ApiKeyList:
        self._tenant(tenant_id)
        return ApiKeyList(data=[key_out(k) for k in self.repo.keys(tenant_id)])

    def revoke_key(self, tenant_id: str, key_id: str) -> ApiKeyOut:
        key = or_not_found(
            self.repo.key(tenant_id, key_id),
            f"No API key with id '{key_id}' for this tenant.",
            param="key_id",
        )
        if key.revoked_at is None:
            key.revoked_at = now()
            self.session.add(key)
            self.session.flush()
            # Refused from the commit on, not once its kept admissions expire.
            on_commit(self.session, invalidate_admissions)
        return key_out(key)

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service.auth import AdminPrincipal
from service.db import SessionDep
from service.tenants import schemas
from service.tenants.service import TenantService

router = APIRouter(prefix="/v1/admin/tenants", tags=["admin"])


async def _service(request: Request, session: SessionDep, _: AdminPrincipal) -> TenantService:
    return TenantService(session, request.app.state.settings)


Tenants = Annotated[TenantService, Depends(_service)]


@router.post("", response_model=schemas.TenantCreated)
def create_tenant(body: schemas.TenantCreate, tenants: Tenants) -> schemas.TenantCreated:
    return tenants.create(body)


@router.get("", response_model=schemas.TenantList)
def list_tenants(tenants: Tenants) -> schemas.TenantList:
    return tenants.list_tenants()


@router.get("/{tenant_id}", response_model=schemas.TenantOut)
def get_tenant(tenant_id: str, tenants: Tenants) -> schemas.TenantOut:
    return tenants.get(tenant_id)


@router.patch("/{tenant_id}", response_model=schemas.TenantOut)
def update_tenant(
    tenant_id: str, body: schemas.TenantUpdate, tenants: Tenants
) -> schemas.TenantOut:
    return tenants.update(tenant_id, body)


@router.post("/{tenant_id}/api_keys", response_model=schemas.ApiKeyCreated)
def create_api_key(
    tenant_id: str, tenants: Tenants, body: schemas.ApiKeyCreate | None = None
) -> schemas.ApiKeyCreated:
    return tenants.create_key(tenant_id, body or schemas.ApiKeyCreate())


@router.get("/{tenant_id}/api_keys", response_model=schemas.ApiKeyList)
def list_api_keys(tenant_id: str, tenants: Tenants) -> schemas.ApiKeyList:
    return tenants.list_keys(tenant_id)


@router.delete("/{tenant_id}/api_keys/{key_id}", response_model=schemas.ApiKeyOut)
def revoke_api_key(tenant_id: str, key_id: str, tenants: Tenants) -> schemas.ApiKeyOut:
    return tenants.revoke_key(tenant_id, key_id)

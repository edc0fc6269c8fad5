from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service.auth import AdminPrincipal
from service.db import SessionDep
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
from service.tenants.service import TenantService

router = APIRouter(prefix="/v1/admin/tenants", tags=["admin"])


async def _service(request: Request, session: SessionDep, _: AdminPrincipal) -> TenantService:
    return TenantService(session, request.app.state.settings)


Tenants = Annotated[TenantService, Depends(_service)]


@router.post("", response_model=TenantCreated)
def create_tenant(body: TenantCreate, tenants: Tenants) -> TenantCreated:
    return tenants.create(body)


@router.get("", response_model=TenantList)
def list_tenants(tenants: Tenants) -> TenantList:
    return TenantList(data=tenants.list_tenants())


@router.get("/{tenant_id}", response_model=TenantOut)
def get_tenant(tenant_id: str, tenants: Tenants) -> TenantOut:
    return tenants.get(tenant_id)


@router.patch("/{tenant_id}", response_model=TenantOut)
def update_tenant(tenant_id: str, body: TenantUpdate, tenants: Tenants) -> TenantOut:
    return tenants.update(tenant_id, body)


@router.post("/{tenant_id}/api_keys", response_model=ApiKeyCreated)
def create_api_key(
    tenant_id: str, tenants: Tenants, body: ApiKeyCreate | None = None
) -> ApiKeyCreated:
    return tenants.create_key(tenant_id, body or ApiKeyCreate())


@router.get("/{tenant_id}/api_keys", response_model=ApiKeyList)
def list_api_keys(tenant_id: str, tenants: Tenants) -> ApiKeyList:
    return ApiKeyList(data=tenants.list_keys(tenant_id))


@router.delete("/{tenant_id}/api_keys/{key_id}", response_model=ApiKeyOut)
def revoke_api_key(tenant_id: str, key_id: str, tenants: Tenants) -> ApiKeyOut:
    return tenants.revoke_key(tenant_id, key_id)

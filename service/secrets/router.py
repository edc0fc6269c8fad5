from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from service.deps import TenantContextDep
from service.secrets.schemas import SECRET_NAME, SecretDeleted, SecretList, SecretOut, SecretPut
from service.secrets.service import SecretService

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])
Name = Annotated[str, Path(pattern=SECRET_NAME)]


async def _service(ctx: TenantContextDep) -> SecretService:
    return SecretService(ctx.session, ctx.tenant_id)


Secrets = Annotated[SecretService, Depends(_service)]


@router.put("/{secret_name}", response_model=SecretOut)
def put_secret(secret_name: Name, body: SecretPut, secrets: Secrets) -> SecretOut:
    """Sets (or replaces) a secret; the answer never holds its value."""
    return secrets.put(secret_name, body)


@router.get("", response_model=SecretList)
def list_secrets(secrets: Secrets) -> SecretList:
    """The tenant's secrets by name, with when each was set: never their values."""
    return secrets.list()


@router.delete("/{secret_name}", response_model=SecretDeleted)
def delete_secret(secret_name: Name, secrets: Secrets) -> SecretDeleted:
    return secrets.delete(secret_name)

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.config import Quotas
from service.schemas import ApiObject, CompleteList

TENANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # Tenant names appear in model ids (ft:<base>:<tenant>:...), so no ':' or spaces.
    name: str = Field(pattern=TENANT_NAME)
    weight: float = Field(1.0, gt=0, le=1000)
    quotas: Quotas | None = None


class TenantUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    weight: float | None = Field(None, gt=0, le=1000)
    quotas: Quotas | None = None


class TenantOut(ApiObject):
    object: Literal["tenant"] = "tenant"
    name: str
    weight: float
    # Effective limits: the tenant's own where set, the service defaults otherwise.
    quotas: Quotas
    created_at: int


class TenantCreated(BaseModel):
    tenant: TenantOut
    api_key: str = Field(description="Shown once; only its hash is stored.")


class TenantList(CompleteList[TenantOut]): ...


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # A label for people: printable text only.
    name: str | None = Field(None, max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")


class ApiKeyOut(ApiObject):
    object: Literal["api_key"] = "api_key"
    tenant_id: str
    name: str | None
    prefix: str
    created_at: int
    revoked_at: int | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="Shown once; only its hash is stored.")


class ApiKeyList(CompleteList[ApiKeyOut]): ...

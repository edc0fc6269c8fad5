"""GET /v1/usage (the tenant's own) and GET /v1/admin/usage (every tenant's)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.auth import AdminPrincipal
from service.db import SessionDep
from service.deps import TenantContextDep
from service.usage.schemas import UsagePage
from service.usage.service import usage_page

router = APIRouter(tags=["usage"])
GroupBy = Annotated[list[str], Query()]
Time = Annotated[int | None, Query(ge=0)]
Limit = Annotated[int | None, Query(ge=1)]


@router.get("/v1/usage", response_model=UsagePage)
def tenant_usage(
    ctx: TenantContextDep,
    start_time: Time = None,
    end_time: Time = None,
    bucket_width: str = "1d",
    group_by: GroupBy = [],  # noqa: B006 (FastAPI copies a Query default)
    limit: Limit = None,
    page: str | None = None,
) -> UsagePage:
    return usage_page(
        ctx.session,
        ctx.tenant_id,
        start_time=start_time,
        end_time=end_time,
        bucket_width=bucket_width,
        group_by=group_by,
        limit=limit,
        page=page,
    )


@router.get("/v1/admin/usage", response_model=UsagePage, tags=["admin"])
def admin_usage(
    session: SessionDep,
    _: AdminPrincipal,
    start_time: Time = None,
    end_time: Time = None,
    bucket_width: str = "1d",
    group_by: GroupBy = [],  # noqa: B006 (FastAPI copies a Query default)
    limit: Limit = None,
    page: str | None = None,
) -> UsagePage:
    return usage_page(
        session,
        None,
        start_time=start_time,
        end_time=end_time,
        bucket_width=bucket_width,
        group_by=group_by,
        limit=limit,
        page=page,
    )

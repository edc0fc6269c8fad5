"""GET /v1/usage (the tenant's own) and GET /v1/admin/usage (every tenant's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session

from service.auth import AdminPrincipal
from service.db import SessionDep
from service.deps import TenantContextDep
from service.usage.schemas import UsagePage
from service.usage.service import usage_page

router = APIRouter(tags=["usage"])


@dataclass
class UsageQuery:
    """OpenAI's usage query parameters (FastAPI reads them from the query string)."""

    start_time: Annotated[int | None, Query(ge=0)] = None
    end_time: Annotated[int | None, Query(ge=0)] = None
    bucket_width: str = "1d"
    group_by: Annotated[list[str] | None, Query()] = None
    limit: Annotated[int | None, Query(ge=1)] = None
    page: str | None = None


Params = Annotated[UsageQuery, Depends()]


@router.get("/v1/usage", response_model=UsagePage)
def tenant_usage(ctx: TenantContextDep, q: Params) -> UsagePage:
    return _page(ctx.session, ctx.tenant_id, q)


@router.get("/v1/admin/usage", response_model=UsagePage, tags=["admin"])
def admin_usage(session: SessionDep, _: AdminPrincipal, q: Params) -> UsagePage:
    return _page(session, None, q)


def _page(session: Session, tenant_id: str | None, q: UsageQuery) -> UsagePage:
    return usage_page(
        session,
        tenant_id,
        start_time=q.start_time,
        end_time=q.end_time,
        bucket_width=q.bucket_width,
        group_by=q.group_by or [],
        limit=q.limit,
        page=q.page,
    )

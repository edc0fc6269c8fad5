"""What a tenant's request gives the feature routers to build their service from: the
request's session (its transaction), the tenant, and the app's shared parts.

Each router's `_service` builder takes a `TenantContext` and picks what its service needs,
so the authentication and the app state are read in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session
from starlette.datastructures import State

from service.auth import TenantPrincipal
from service.db import SessionDep
from service.registry.repository import LazyCatalog


@dataclass(frozen=True)
class TenantContext:
    session: Session
    tenant_id: str
    # `app.state`: settings, store, catalog, serving, queue... (set by service.main).
    state: State

    @property
    def catalog(self) -> LazyCatalog:
        """The built-in and registered base models, read from the database on first use."""
        return LazyCatalog(self.session, self.state.catalog)


# `async`: FastAPI runs a plain `def` dependency in the threadpool, a hop per request for
# what is only attribute reads.
async def tenant_context(
    request: Request, session: SessionDep, principal: TenantPrincipal
) -> TenantContext:
    assert principal.tenant_id is not None  # require_tenant let only a tenant key through
    return TenantContext(session, principal.tenant_id, request.app.state)


TenantContextDep = Annotated[TenantContext, Depends(tenant_context)]

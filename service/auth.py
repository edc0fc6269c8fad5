"""API keys -> Principal. Admin key from settings; tenant keys hashed in the database."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from sqlmodel import Session

from service.db import SessionDep
from service.errors import PermissionDenied, Unauthorized
from service.models import ApiKey
from service.tenants.repository import TenantRepository

KEY_PREFIX = "tp-"


@dataclass(frozen=True)
class Principal:
    role: Literal["admin", "tenant"]
    tenant_id: str | None = None
    key_id: str | None = None

    @property
    def scope(self) -> str:
        return self.tenant_id or "admin"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            code="missing_api_key",
        )
    return token.strip()


def authenticate(session: Session, token: str, admin_key: str | None) -> Principal:
    if is_admin_key(token, admin_key):
        return Principal(role="admin")
    return tenant_principal(TenantRepository(session).live_key(hash_key(token)))


def is_admin_key(token: str, admin_key: str | None) -> bool:
    return bool(admin_key) and hmac.compare_digest(token.encode(), (admin_key or "").encode())


def tenant_principal(key: ApiKey | None) -> Principal:
    """The principal of a key looked up by its hash (None: unknown or revoked)."""
    if key is None:
        # Same answer for unknown and revoked keys: a revoked key is refused at once.
        raise Unauthorized("Incorrect API key provided.")
    return Principal(role="tenant", tenant_id=key.tenant_id, key_id=key.id)


def get_principal(request: Request, session: SessionDep) -> Principal:
    return authenticate(session, bearer(request), request.app.state.settings.admin_key)


def as_tenant(principal: Principal) -> Principal:
    if principal.role != "tenant":
        raise PermissionDenied(
            "This endpoint acts for a tenant: use a tenant API key, not the admin key."
        )
    return principal


# The role checks are `async`: FastAPI runs a plain `def` dependency in the threadpool,
# a hop per request for a comparison. The same holds for the routers' `_service` builders.
async def require_tenant(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return as_tenant(principal)


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if principal.role != "admin":
        raise PermissionDenied("This endpoint needs the admin key.")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
TenantPrincipal = Annotated[Principal, Depends(require_tenant)]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]

"""Idempotency-Key on POSTs: a retry with the same key gets the first answer again.

The record is written in the same transaction as the object the request created, so a
crash can never leave one without the other, and two concurrent first tries cannot both
create: the second's insert of the same (scope, key) fails and its work rolls back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from service.auth import CurrentPrincipal
from service.common import now
from service.db import SessionDep
from service.errors import BadRequest, Conflict
from service.models import IdempotencyRecord

HEADER = "idempotency-key"
M = TypeVar("M", bound=BaseModel)


@dataclass
class Idempotency:
    session: Session
    # Whose keys: the tenant's id, or "admin".
    scope: str
    # None: the request carries no Idempotency-Key, so it always runs.
    key: str | None
    endpoint: str
    fingerprint: str
    ttl_s: float

    def once(self, create: Callable[[], M]) -> M | JSONResponse:
        """`create()`'s answer, remembered under the key; for a retry, the first answer."""
        if (replayed := self.replay()) is not None:
            return replayed
        out = create()
        self.remember(out)
        return out

    def replay(self) -> JSONResponse | None:
        """The stored answer for this key, or None when the request should run."""
        if self.key is None:
            return None
        record = self.session.get(IdempotencyRecord, (self.scope, self.key))
        if record is None:
            return None
        if record.created_at < now() - self.ttl_s:
            self.session.delete(record)
            self.session.flush()
            return None
        if record.endpoint != self.endpoint or record.fingerprint != self.fingerprint:
            raise Conflict(
                "This Idempotency-Key was already used with a different request; "
                "use a new key for a new request.",
                code="idempotency_key_reused",
            )
        return JSONResponse(
            record.body, status_code=record.status_code, headers={"Idempotent-Replayed": "true"}
        )

    def remember(self, response: BaseModel, status_code: int = 200) -> None:
        if self.key is None:
            return
        self.session.add(
            IdempotencyRecord(
                scope=self.scope,
                key=self.key,
                endpoint=self.endpoint,
                fingerprint=self.fingerprint,
                status_code=status_code,
                body=jsonable_encoder(response),
                created_at=now(),
            )
        )
        try:
            self.session.flush()
        except IntegrityError:
            raise Conflict(
                "Another request with this Idempotency-Key is in progress; retry shortly.",
                code="idempotency_key_in_use",
            ) from None


async def get_idempotency(
    request: Request, principal: CurrentPrincipal, session: SessionDep
) -> Idempotency:
    key = request.headers.get(HEADER)
    if key is not None and not 1 <= len(key) <= 255:
        raise BadRequest("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    # Multipart uploads are not buffered to fingerprint them: the key alone identifies them.
    if key is not None and not request.headers.get("content-type", "").startswith("multipart/"):
        digest.update(await request.body())
    return Idempotency(
        session,
        principal.scope,
        key,
        f"{request.method} {request.url.path}",
        digest.hexdigest(),
        request.app.state.settings.idempotency_ttl_s,
    )


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]

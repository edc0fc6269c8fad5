"""A tenant's secrets: written and deleted through the API, listed by name, never read back.

Their one reader is the dispatcher (`job_secrets`), which hands the tracker credentials a
job needs to its worker beside the spec, never in it (see `workers.trackers`).
"""

from __future__ import annotations

import json

from sqlmodel import Session

from service.common import now
from service.errors import BadRequest, or_not_found
from service.models import TenantSecret
from service.secrets.repository import SecretRepository
from service.secrets.schemas import (
    MAX_SECRETS,
    SecretDeleted,
    SecretList,
    SecretOut,
    SecretPut,
)
from service.storage import ArtifactStore
from workers.spec import JobSpec
from workers.trackers import TRACKER_SECRETS_FILE, secret_names


def secret_out(s: TenantSecret) -> SecretOut:
    return SecretOut(
        id=s.name, name=s.name, created_at=int(s.created_at), updated_at=int(s.updated_at)
    )


class SecretService:
    def __init__(self, session: Session, tenant_id: str) -> None:
        self.repo = SecretRepository(session, tenant_id)
        self.tenant_id = tenant_id

    def put(self, name: str, body: SecretPut) -> SecretOut:
        at = now()
        secret = self.repo.get(name)
        if secret is None:
            if len(self.repo.all()) >= MAX_SECRETS:
                raise BadRequest(
                    f"A tenant holds at most {MAX_SECRETS} secrets; delete one first.",
                    param="secret_name",
                    code="too_many_secrets",
                )
            secret = TenantSecret(
                tenant_id=self.tenant_id, name=name, value=body.value, created_at=at, updated_at=at
            )
        else:
            secret.value = body.value
            secret.updated_at = at
        return secret_out(self.repo.put(secret))

    def list(self) -> SecretList:
        return SecretList(data=[secret_out(s) for s in self.repo.all()])

    def delete(self, name: str) -> SecretDeleted:
        secret = or_not_found(
            self.repo.get(name),
            f"No secret named '{name}'.",
            param="secret_name",
            code="secret_not_found",
        )
        self.repo.delete(secret)
        return SecretDeleted(id=name)


def write_job_secrets(session: Session, store: ArtifactStore, spec: JobSpec) -> None:
    """Leaves the tracker credentials a starting job needs beside its spec, where only its
    driver reads them (and removes them); nothing when the job tracks nothing.

    The values are read now, not when the job was created: a key rotated while the job
    was queued is the one it uses."""
    if not spec.integrations:
        return
    values = SecretRepository(session, spec.tenant_id).named(secret_names(spec.integrations))
    key = f"{spec.tenant_id}/jobs/{spec.job_id}/{TRACKER_SECRETS_FILE}"
    store.write_bytes(key, json.dumps(values).encode())

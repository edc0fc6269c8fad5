"""The events a webhook endpoint may subscribe to, their payloads, and the outbox write.

`enqueue()` runs inside the transaction of the change it tells of (a job's `transition()`,
a deployment found ready): the outbox rows commit with the change or not at all, so an
event is never sent for a change that rolled back, nor lost for one that committed.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from typing import Any

from sqlmodel import Session

from service.common import now
from service.db import on_commit
from service.models import WebhookDelivery
from service.models.status import DeliveryStatus, JobStatus
from service.webhooks.repository import OutboxRepository

JOB_SUCCEEDED = "fine_tuning.job.succeeded"
JOB_FAILED = "fine_tuning.job.failed"
JOB_CANCELLED = "fine_tuning.job.cancelled"
# Ours (OpenAI has no pause, and no deployments).
JOB_PAUSED = "fine_tuning.job.paused"
DEPLOYMENT_READY = "deployment.ready"
EVENT_TYPES = (JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED, JOB_PAUSED, DEPLOYMENT_READY)

JOB_EVENTS: dict[JobStatus, str] = {
    JobStatus.SUCCEEDED: JOB_SUCCEEDED,
    JobStatus.FAILED: JOB_FAILED,
    JobStatus.CANCELLED: JOB_CANCELLED,
    JobStatus.PAUSED: JOB_PAUSED,
}

PENDING, DELIVERED, FAILED = DeliveryStatus.PENDING, DeliveryStatus.DELIVERED, DeliveryStatus.FAILED

# Set when this process commits outbox rows: its sender wakes at once rather than at its
# next poll. Rows other replicas commit wait for the poll.
written = threading.Event()


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(16)


def delivery_id(event_id: str, endpoint_id: str) -> str:
    """One row per event and endpoint, named by both: a second write of the same event (a
    second replica announcing the same deployment) collides on the primary key."""
    return "whd_" + hashlib.sha256(f"{event_id}/{endpoint_id}".encode()).hexdigest()[:32]


def payload(
    event_id: str, event_type: str, created_at: float, data: dict[str, Any]
) -> dict[str, Any]:
    # OpenAI's event shape: {"id": "evt_...", "object": "event", "created_at", "type", "data"}.
    return {
        "id": event_id,
        "object": "event",
        "created_at": int(created_at),
        "type": event_type,
        "data": data,
    }


def enqueue(
    session: Session,
    tenant_id: str,
    event_type: str,
    data: dict[str, Any],
    *,
    created_at: float,
    event_id: str | None = None,
    endpoints_created_by: float | None = None,
) -> int:
    """Write the event to the outbox for each of the tenant's endpoints subscribed to it
    (one SELECT; nothing more when none is); the count written. `endpoints_created_by`
    leaves out endpoints created after that time."""
    repo = OutboxRepository(session)
    endpoints = [
        e
        for e in repo.endpoints_of(tenant_id)
        if event_type in e.event_types
        and (endpoints_created_by is None or e.created_at <= endpoints_created_by)
    ]
    if not endpoints:
        return 0
    event_id = event_id or new_event_id()
    body = payload(event_id, event_type, created_at, data)
    t = now()
    for endpoint in endpoints:
        repo.add(
            WebhookDelivery(
                id=delivery_id(event_id, endpoint.id),
                event_id=event_id,
                endpoint_id=endpoint.id,
                tenant_id=tenant_id,
                event_type=event_type,
                payload=body,
                status=PENDING,
                attempts=0,
                next_attempt_at=t,
                created_at=t,
            )
        )
    on_commit(session, written.set)
    return len(endpoints)


def job_changed(session: Session, tenant_id: str, job_id: str, to: JobStatus, at: float) -> None:
    """From `transition()`: a job ended or paused."""
    event_type = JOB_EVENTS.get(to)
    if event_type is not None:
        enqueue(session, tenant_id, event_type, {"id": job_id}, created_at=at)

"""The job state machine. Every status change goes through `transition()`.

It is a compare-and-set: the UPDATE only matches while the job is in a state the
transition may start from, so two replicas (or a scheduler and a cancel) racing on the
same job cannot both win.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, select

from service import metrics
from service.common import new_id, now
from service.models import Job, JobEvent

log = logging.getLogger(__name__)
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

ALLOWED: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "cancelled", "failed"}),
    # running -> queued: the reconciler retries a job whose cluster job vanished.
    "running": frozenset({"succeeded", "failed", "cancelling", "queued"}),
    "cancelling": frozenset({"cancelled", "failed", "succeeded"}),
}


def sources_of(target: str) -> frozenset[str]:
    return frozenset(src for src, targets in ALLOWED.items() if target in targets)


def add_event(
    session: Session,
    job_id: str,
    tenant_id: str,
    message: str,
    *,
    level: str = "info",
    type_: str = "message",
    data: dict[str, Any] | None = None,
    created_at: float | None = None,
) -> JobEvent:
    event = JobEvent(
        id=new_id("ftevent"),
        job_id=job_id,
        tenant_id=tenant_id,
        level=level,
        type=type_,
        message=message,
        data=data,
        created_at=created_at if created_at is not None else now(),
    )
    session.add(event)
    return event


def transition(
    session: Session,
    job_id: str,
    to: str,
    *,
    expected: Collection[str] | None = None,
    message: str | None = None,
    level: str = "info",
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Move `job_id` to `to` if it is in an allowed (and `expected`) state; True if it moved.

    `fields` are other Job columns to set in the same UPDATE. An event records the change.
    """
    sources = sources_of(to)
    if expected is not None:
        sources = sources & frozenset(expected)
    if not sources:
        return False
    timing = None
    if to == "running" or to in TERMINAL:
        # For the dispatch-latency and duration metrics: a queued job's updated_at is when
        # it entered the queue (only transitions write it).
        timing = session.exec(
            select(Job.created_at, Job.updated_at, Job.started_at).where(col(Job.id) == job_id)
        ).first()
    ts = now()
    values: dict[str, Any] = {"status": to, "updated_at": ts, **fields}
    if to == "running":
        values.setdefault("started_at", ts)
    if to in TERMINAL:
        values.setdefault("finished_at", ts)
    stmt = (
        update(Job)
        .where(col(Job.id) == job_id, col(Job.status).in_(sorted(sources)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    result = session.exec(stmt)
    if result.rowcount != 1:
        return False
    loaded = session.identity_map.get(identity_key(Job, job_id))
    if isinstance(loaded, Job):
        # The row is known to hold exactly these values now: update the loaded object in
        # place rather than reading the row back.
        for key, value in values.items():
            set_committed_value(loaded, key, value)
        tenant_id = loaded.tenant_id
    else:
        tenant_id = session.exec(select(Job.tenant_id).where(Job.id == job_id)).one()
    add_event(
        session,
        job_id,
        tenant_id,
        message or f"Job status changed to {to}",
        level=level,
        type_="status",
        data={"status": to, **(data or {})},
        created_at=ts,
    )
    session.flush()
    extra = {"job_id": job_id, "tenant_id": tenant_id, "status": to}
    metrics.on_commit(session, lambda: log.info("job %s is %s", job_id, to, extra=extra))
    if timing is not None:
        created_at, queued_since, started_at = timing
        metrics.job_transitioned(
            session,
            to,
            ts,
            created_at=created_at,
            queued_since=queued_since,
            started_at=values.get("started_at", started_at),
        )
    return True

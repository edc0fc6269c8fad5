"""The job state machine. Every status change goes through `transition()`, and every
side effect of a change hangs off it: the status event, the log line, the metrics, the
webhooks' outbox rows, and on success the registration of the fine-tuned model.

It is a compare-and-set: the UPDATE only matches while the job is in a state the
transition may start from, so two replicas (or a scheduler and a cancel) racing on the
same job cannot both win, and a change's effects happen once.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session

from service import metrics
from service.common import new_id, now
from service.jobs.repository import JobStore
from service.models import FineTunedModel, Job, JobEvent
from service.models.status import TERMINAL, JobStatus
from service.usage.recording import record_job_usage
from service.webhooks.events import job_changed as tell_webhooks

log = logging.getLogger(__name__)
# OpenAI's event types: a status change is a message whose data names the status.
EventType = Literal["message", "metrics"]

S = JobStatus
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    S.VALIDATING_FILES: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED}),
    # running -> queued: the reconciler retries a job whose cluster job vanished.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLING, S.QUEUED, S.PAUSING}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED, S.SUCCEEDED}),
    # A run asked to pause may still finish, fail, or be cancelled before it stops.
    S.PAUSING: frozenset({S.PAUSED, S.SUCCEEDED, S.FAILED, S.CANCELLING}),
    # resume: back to the queue, to go on from the checkpoint the pause saved.
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
}


@dataclass(frozen=True)
class NewModel:
    """The model a job's success registers (`transition(..., to=SUCCEEDED, model=...)`)."""

    id: str
    artifact_uri: str


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    return frozenset(src for src, targets in ALLOWED.items() if target in targets)


def add_event(
    session: Session,
    job_id: str,
    tenant_id: str,
    message: str,
    *,
    level: str = "info",
    type_: EventType = "message",
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
    to: JobStatus,
    *,
    expected: Collection[JobStatus] | None = None,
    message: str | None = None,
    level: str = "info",
    data: dict[str, Any] | None = None,
    model: NewModel | None = None,
    **fields: Any,
) -> bool:
    """Move `job_id` to `to` if it is in an allowed (and `expected`) state; True if it moved.

    `fields` are other Job columns to set in the same UPDATE; `model` (on success) is the
    fine-tuned model to register, whose id also goes into the job's `fine_tuned_model`.
    """
    sources = sources_of(to)
    if expected is not None:
        sources = sources & frozenset(expected)
    if not sources:
        return False
    store = JobStore(session)
    # For the dispatch-latency and duration metrics: a queued job's updated_at is when it
    # entered the queue (only transitions write it).
    timing = store.timing(job_id) if to == S.RUNNING or to in TERMINAL else None
    ts = now()
    values: dict[str, Any] = {"status": to, "updated_at": ts, **fields}
    if model is not None:
        values["fine_tuned_model"] = model.id
    if to == S.RUNNING:
        values.setdefault("started_at", ts)
    if to in TERMINAL:
        values.setdefault("finished_at", ts)
    if not store.compare_and_set(job_id, sources, values):
        return False
    loaded = session.identity_map.get(identity_key(Job, job_id))
    if isinstance(loaded, Job):
        # The row is known to hold exactly these values now: update the loaded object in
        # place rather than reading the row back.
        for key, value in values.items():
            set_committed_value(loaded, key, value)
        tenant_id = loaded.tenant_id
    else:
        tenant_id = store.tenant_of(job_id)
    if model is not None:
        _register(store, job_id, model, ts)
    add_event(
        session,
        job_id,
        tenant_id,
        message or f"Job status changed to {to}",
        level=level,
        # A message, as OpenAI's events are (message | metrics); `data.status` says which.
        data={"status": to, **(data or {})},
        created_at=ts,
    )
    if to in TERMINAL:
        # In the transaction that ends the job: its usage is written once, with its end.
        record_job_usage(session, job_id, ts)
    if to in TERMINAL or to == S.PAUSED:
        # The outbox row commits with the change it tells of, or not at all.
        tell_webhooks(session, tenant_id, job_id, to, ts)
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


def _register(store: JobStore, job_id: str, model: NewModel, at: float) -> None:
    if store.model(model.id) is not None:
        return
    job = store.get(job_id)
    assert job is not None  # it just changed
    store.add(
        FineTunedModel.of_job(job, id=model.id, artifact_uri=model.artifact_uri, created_at=at)
    )

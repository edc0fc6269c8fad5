from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from service.auth import TenantPrincipal
from service.db import SessionDep
from service.errors import Unauthorized
from service.idempotency import IdempotencyDep
from service.jobs.schemas import (
    CheckpointList,
    EventList,
    JobCreate,
    JobList,
    JobOut,
    MetricList,
    TrialList,
)
from service.jobs.service import JobService
from service.models import Tenant
from service.registry.repository import LazyCatalog

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


def _service(request: Request, session: SessionDep, principal: TenantPrincipal) -> JobService:
    tenant = session.get(Tenant, principal.tenant_id)
    if tenant is None:
        raise Unauthorized("Incorrect API key provided.")
    state = request.app.state
    return JobService(
        session,
        tenant,
        settings=state.settings,
        catalog=LazyCatalog(session, state.catalog),
        store=state.store,
        backend=state.backend,
        queue=state.queue,
    )


Jobs = Annotated[JobService, Depends(_service)]
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=JobOut)
def create_job(body: JobCreate, jobs: Jobs, idem: IdempotencyDep) -> JobOut | JSONResponse:
    if (replayed := idem.replay()) is not None:
        return replayed
    out = jobs.create(body)
    idem.remember(out)
    return out


@router.get("", response_model=JobList)
def list_jobs(jobs: Jobs, after: str | None = None, limit: Limit = 20) -> JobList:
    return jobs.list(after, limit)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, jobs: Jobs) -> JobOut:
    return jobs.get(job_id)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, jobs: Jobs) -> JobOut:
    return jobs.cancel(job_id)


@router.get("/{job_id}/events", response_model=EventList)
def list_events(job_id: str, jobs: Jobs, after: str | None = None, limit: Limit = 20) -> EventList:
    return jobs.events(job_id, after, limit)


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(
    job_id: str, jobs: Jobs, after: str | None = None, limit: Limit = 10
) -> CheckpointList:
    return jobs.checkpoints(job_id, after, limit)


@router.get("/{job_id}/metrics", response_model=MetricList)
def list_metrics(
    job_id: str,
    jobs: Jobs,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> MetricList:
    """Training and validation metrics by step, oldest first (a Tuneplane extension); page
    on with `after` = the last point's id."""
    return jobs.metrics(job_id, after, limit)


@router.get("/{job_id}/trials", response_model=TrialList)
def list_trials(job_id: str, jobs: Jobs) -> TrialList:
    """Every trial of a hyperparameter search (a Tuneplane extension)."""
    return jobs.trials(job_id)

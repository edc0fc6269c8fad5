from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from service.deps import TenantContextDep
from service.errors import Unauthorized
from service.idempotency import IdempotencyDep
from service.jobs import schemas
from service.jobs.service import JobService
from service.schemas import at_most
from service.tenants.repository import TenantRepository

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


def _service(ctx: TenantContextDep) -> JobService:
    # Not async: it reads the tenant row (its quotas and name) from the database.
    tenant = TenantRepository(ctx.session).get(ctx.tenant_id)
    if tenant is None:
        raise Unauthorized("Incorrect API key provided.")
    state = ctx.state
    return JobService(
        ctx.session,
        tenant,
        settings=state.settings,
        catalog=ctx.catalog,
        store=state.store,
        backend=state.backend,
        queue=state.queue,
    )


Jobs = Annotated[JobService, Depends(_service)]
# Any positive limit, as OpenAI's lists take; a page holds at most 100.
Limit = Annotated[int, Query(ge=1), at_most(100)]


@router.post("", response_model=schemas.JobOut)
def create_job(
    body: schemas.JobCreate, jobs: Jobs, idem: IdempotencyDep
) -> schemas.JobOut | JSONResponse:
    return idem.once(lambda: jobs.create(body))


@router.get(
    "",
    response_model=schemas.JobList,
    openapi_extra={"parameters": [schemas.METADATA_FILTER_PARAM]},
)
def list_jobs(
    request: Request, jobs: Jobs, after: str | None = None, limit: Limit = 20
) -> schemas.JobList:
    metadata = schemas.metadata_filter(request.query_params.multi_items())
    return jobs.list(after, limit, metadata)


@router.get("/{job_id}", response_model=schemas.JobOut)
def get_job(job_id: str, jobs: Jobs) -> schemas.JobOut:
    return jobs.get(job_id)


@router.post("/{job_id}/cancel", response_model=schemas.JobOut)
def cancel_job(job_id: str, jobs: Jobs) -> schemas.JobOut:
    return jobs.cancel(job_id)


@router.post("/{job_id}/pause", response_model=schemas.JobOut)
def pause_job(job_id: str, jobs: Jobs) -> schemas.JobOut:
    """Saves a checkpoint at the run's next step and stops it; `status` says so once the
    run has stopped (`state` names the pause under way until then)."""
    return jobs.pause(job_id)


@router.post("/{job_id}/resume", response_model=schemas.JobOut)
def resume_job(job_id: str, jobs: Jobs) -> schemas.JobOut:
    """Queues a paused job again; it goes on from the checkpoint its pause saved."""
    return jobs.resume(job_id)


@router.get("/{job_id}/events", response_model=schemas.EventList)
def list_events(
    job_id: str, jobs: Jobs, after: str | None = None, limit: Limit = 20
) -> schemas.EventList:
    return jobs.events(job_id, after, limit)


@router.get("/{job_id}/checkpoints", response_model=schemas.CheckpointList)
def list_checkpoints(
    job_id: str, jobs: Jobs, after: str | None = None, limit: Limit = 10
) -> schemas.CheckpointList:
    return jobs.checkpoints(job_id, after, limit)


@router.get("/{job_id}/metrics", response_model=schemas.MetricList)
def list_metrics(
    job_id: str,
    jobs: Jobs,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> schemas.MetricList:
    """Training and validation metrics by step, oldest first (a Tuneplane extension); page
    on with `after` = the last point's id."""
    return jobs.metrics(job_id, after, limit)


@router.get("/{job_id}/trials", response_model=schemas.TrialList)
def list_trials(job_id: str, jobs: Jobs) -> schemas.TrialList:
    """Every trial of a hyperparameter search (a Tuneplane extension)."""
    return jobs.trials(job_id)

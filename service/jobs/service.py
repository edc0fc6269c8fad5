"""Fine-tuning job rules: read a tenant's jobs, create one, cancel one.

Turning a request into a `JobSpec` is `service.jobs.specs`; the API shapes of stored rows
are `service.jobs.views`. Status changes go through `service.jobs.state.transition`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from sqlmodel import Session

from service.common import known_page, now
from service.config import Settings
from service.db import on_commit
from service.errors import BadRequest, NotFound, TooManyRequests
from service.faults import crash_point
from service.files.repository import FileRepository
from service.jobs.control import request_pause_quietly
from service.jobs.eta import estimated_finish
from service.jobs.lifecycle import JobLifecycle
from service.jobs.queueing import dequeue_quietly, enqueue_quietly
from service.jobs.repository import JobRepository
from service.jobs.schemas import (
    CheckpointList,
    EventList,
    JobCreate,
    JobList,
    JobOut,
    MetadataFilter,
    MetricList,
    TrialList,
)
from service.jobs.specs import JobDraft, SpecBuilder
from service.jobs.state import add_event
from service.jobs.views import checkpoint_out, event_out, job_out, metric_point, trial_out
from service.models import Job, Tenant
from service.models.status import TERMINAL, WAITING, JobStatus
from service.queue import FairQueue
from service.ray_backend import ComputeBackend, submission_id
from service.registry.catalog import Catalog
from service.registry.repository import ModelRepository
from service.storage import ArtifactStore
from service.tenants.service import effective_quotas
from service.usage.service import check_token_budget

# Where a page of a job's records says its cursor was not found.
OF_THIS_JOB = " of this job"


class JobService:
    def __init__(
        self,
        session: Session,
        tenant: Tenant,
        *,
        settings: Settings,
        catalog: Catalog,
        store: ArtifactStore,
        backend: ComputeBackend | None = None,
        queue: FairQueue | None = None,
    ) -> None:
        self.session = session
        self.tenant = tenant
        self.repo = JobRepository(session, tenant.id)
        self.settings = settings
        self.backend = backend
        self.queue = queue
        self.specs = SpecBuilder(
            tenant=tenant,
            catalog=catalog,
            files=FileRepository(session, tenant.id),
            settings=settings,
            store=store,
            models=ModelRepository(session, tenant.id),
        )

    # -- reads ---------------------------------------------------------------------------

    def _get(self, job_id: str) -> Job:
        job = self.repo.get(job_id)
        if job is None:
            raise NotFound(f"No fine-tuning job with id '{job_id}'.", param="fine_tuning_job_id")
        return job

    def get(self, job_id: str) -> JobOut:
        job = self._get(job_id)
        return job_out(job, self._estimates([job]).get(job.id))

    def list(
        self, after: str | None, limit: int, metadata: MetadataFilter | None = None
    ) -> JobList:
        found = self.repo.list_page(
            after,
            limit,
            metadata=metadata.pairs if metadata else None,
            no_metadata=metadata.no_metadata if metadata else False,
        )
        page = known_page(found, after, "fine-tuning job")
        estimates = self._estimates(page.items)
        return JobList.of(page, lambda job: job_out(job, estimates.get(job.id)))

    def _estimates(self, jobs: Sequence[Job]) -> dict[str, int | None]:
        """`estimated_finish` of those of `jobs` that are running, in one read for all:
        a job paused, stopping or not started has none."""
        running = [j for j in jobs if j.status == JobStatus.RUNNING]
        if not running:
            return {}
        progress = self.repo.progress(running)
        at = now()
        return {j.id: estimated_finish(j.search, progress[j.id], at) for j in running}

    def events(self, job_id: str, after: str | None, limit: int) -> EventList:
        self._get(job_id)
        page = known_page(self.repo.events(job_id, after, limit), after, "event", OF_THIS_JOB)
        return EventList.of(page, event_out)

    def metrics(self, job_id: str, after: str | None, limit: int) -> MetricList:
        self._get(job_id)
        events = self.repo.metric_events(job_id, after, limit)
        page = known_page(events, after, "metric", OF_THIS_JOB)
        # A metrics event without a step is no point on a curve: left out.
        points = [p for p in (metric_point(e) for e in page.items) if p is not None]
        return MetricList(data=points, has_more=page.has_more)

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> CheckpointList:
        self._get(job_id)
        checkpoints = self.repo.checkpoints(job_id, after, limit)
        page = known_page(checkpoints, after, "checkpoint", OF_THIS_JOB)
        return CheckpointList.of(page, checkpoint_out)

    def trials(self, job_id: str) -> TrialList:
        self._get(job_id)
        return TrialList(data=[trial_out(t) for t in self.repo.trials(job_id)])

    # -- create --------------------------------------------------------------------------

    def create(self, body: JobCreate) -> JobOut:
        quotas = effective_quotas(self.tenant, self.settings)
        self._check_waiting_quota(quotas.max_queued_jobs)
        if quotas.monthly_token_budget is not None:
            check_token_budget(
                self.session, self.tenant.id, self.tenant.name, quotas.monthly_token_budget
            )
        draft = self.specs.build(body, max_gpus=quotas.max_gpus)
        ts = now()
        # Files are validated line by line when they are uploaded, so a job that passed the
        # checks is born queued: it never waits for its files to be validated.
        job = draft.row(JobStatus.QUEUED, created_at=ts)
        add_event(
            self.session,
            job.id,
            self.tenant.id,
            _queued_message(draft),
            data={"status": JobStatus.QUEUED},
            created_at=ts,
        )
        self.repo.add(job)
        self._after_commit(enqueue_quietly, job)
        return job_out(job)

    def _check_waiting_quota(self, max_queued_jobs: int | None) -> None:
        if max_queued_jobs is None:
            return
        waiting = self.repo.count_in(WAITING)
        if waiting >= max_queued_jobs:
            raise TooManyRequests(
                f"Tenant '{self.tenant.name}' already has {waiting} queued jobs, its quota "
                f"(max_queued_jobs={max_queued_jobs}); wait for some to start or "
                "cancel some.",
                code="quota_exceeded",
            )

    def _after_commit(self, action: Callable[[FairQueue, Job], None], job: Job) -> None:
        """Tell the Redis queue once the row is committed (the quiet helpers log, not fail)."""
        if self.queue is not None:
            queue = self.queue
            on_commit(self.session, lambda: action(queue, job))

    # -- cancel --------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobOut:
        job = self._get(job_id)
        if job.status in (JobStatus.CANCELLED, JobStatus.CANCELLING):
            return job_out(job)
        if job.status in TERMINAL:
            raise BadRequest(
                f"Job {job_id} has already {job.status}; it cannot be cancelled.",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            )
        lifecycle = JobLifecycle(self.session)
        if lifecycle.cancel_unstarted(job_id):
            self._after_commit(dequeue_quietly, job)
            return job_out(self._get(job_id))
        if lifecycle.cancel_paused(job_id):
            return job_out(self._get(job_id))
        # It started meanwhile (or was already running): stop it on the cluster.
        if lifecycle.stop(job_id) and self.backend is not None:
            self.backend.stop(submission_id(job_id, job.attempts))
        return job_out(self._get(job_id))

    # -- pause and resume ----------------------------------------------------------------

    def pause(self, job_id: str) -> JobOut:
        job = self._get(job_id)
        if job.status != JobStatus.RUNNING or not JobLifecycle(self.session).pause(job_id):
            raise self._cannot(job_id, "pause")
        # Once the change is committed, the run hears of it; if this replica dies first,
        # the reconciler writes the request for every pausing job.
        crash_at = self.settings.fault_crash_at

        def tell_the_run() -> None:
            crash_point(crash_at, "pause.after_commit")
            request_pause_quietly(job)

        on_commit(self.session, tell_the_run)
        return job_out(self._get(job_id))

    def _cannot(self, job_id: str, action: Literal["pause", "resume"]) -> BadRequest:
        status = self._get(job_id).status  # as it is now: it may have changed meanwhile
        only = "a running job can be paused" if action == "pause" else "a paused job can be resumed"
        return BadRequest(
            f"Job {job_id} is {_said(status)}; only {only}.",
            param="fine_tuning_job_id",
            code="job_not_pausable" if action == "pause" else "job_not_resumable",
        )

    def resume(self, job_id: str) -> JobOut:
        job = self._get(job_id)
        if job.status == JobStatus.PAUSED:
            quotas = effective_quotas(self.tenant, self.settings)
            self._check_waiting_quota(quotas.max_queued_jobs)
        if job.status != JobStatus.PAUSED or not JobLifecycle(self.session).resume(job):
            raise self._cannot(job_id, "resume")
        self._after_commit(enqueue_quietly, job)
        return job_out(self._get(job_id))


def _said(status: str) -> str:
    """A status in a sentence: a change under way as "being ..." rather than its name."""
    return {
        JobStatus.PAUSING: "being paused",
        JobStatus.CANCELLING: "being cancelled",
        JobStatus.VALIDATING_FILES: "validating its files",
    }.get(JobStatus(status), status)


def _queued_message(draft: JobDraft) -> str:
    validation = draft.validation_file
    return (
        f"Validated training file {draft.training_file.id}"
        + (f" and validation file {validation.id}" if validation else "")
        + "; job queued"
    )

from __future__ import annotations

from sqlmodel import col, func, select

from service.common import Page
from service.models import Checkpoint, Job, JobEvent, Trial
from service.repository import ScopedRepository

QUEUED_STATES = ("validating_files", "queued")


class JobRepository(ScopedRepository[Job]):
    model = Job

    def count_in(self, statuses: tuple[str, ...]) -> int:
        stmt = select(func.count()).where(
            Job.tenant_id == self.tenant_id, col(Job.status).in_(statuses)
        )
        return int(self.session.exec(stmt).one())

    def list_page(self, after: str | None, limit: int) -> Page[Job] | None:
        return self.page(self._select(), after, limit)

    def events(self, job_id: str, after: str | None, limit: int) -> Page[JobEvent] | None:
        """Newest first, like OpenAI; the cursor is an event id of this job."""
        return self._event_page(job_id, after, limit, newest_first=True)

    def metric_events(self, job_id: str, after: str | None, limit: int) -> Page[JobEvent] | None:
        """Per-step metrics events, oldest first; the cursor is an event id of this job."""
        return self._event_page(job_id, after, limit, newest_first=False, of_type="metrics")

    def _event_page(
        self,
        job_id: str,
        after: str | None,
        limit: int,
        *,
        newest_first: bool,
        of_type: str | None = None,
    ) -> Page[JobEvent] | None:
        """A page of the job's events by `seq`; None when `after` is not an event of it."""
        stmt = select(JobEvent).where(
            JobEvent.tenant_id == self.tenant_id, JobEvent.job_id == job_id
        )
        seq = col(JobEvent.seq)
        if after is not None:
            anchor = self.session.exec(stmt.where(JobEvent.id == after)).first()
            if anchor is None:
                return None
            stmt = stmt.where(seq < anchor.seq if newest_first else seq > anchor.seq)
        if of_type is not None:
            stmt = stmt.where(JobEvent.type == of_type)
        order = seq.desc() if newest_first else seq.asc()
        rows = list(self.session.exec(stmt.order_by(order).limit(limit + 1)))
        return Page(items=rows[:limit], has_more=len(rows) > limit)

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> Page[Checkpoint] | None:
        """Newest (highest step) first; the cursor is a checkpoint id of this job."""
        stmt = select(Checkpoint).where(
            Checkpoint.tenant_id == self.tenant_id, Checkpoint.job_id == job_id
        )
        if after is not None:
            anchor = self.session.exec(stmt.where(Checkpoint.id == after)).first()
            if anchor is None:
                return None
            stmt = stmt.where(col(Checkpoint.step_number) < anchor.step_number)
        order = col(Checkpoint.step_number).desc()
        rows = list(self.session.exec(stmt.order_by(order).limit(limit + 1)))
        return Page(items=rows[:limit], has_more=len(rows) > limit)

    def trials(self, job_id: str) -> list[Trial]:
        stmt = select(Trial).where(Trial.tenant_id == self.tenant_id, Trial.job_id == job_id)
        return list(self.session.exec(stmt.order_by(col(Trial.created_at), col(Trial.trial_id))))

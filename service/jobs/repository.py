"""Job queries: `JobRepository` for one tenant's requests, `JobStore` for the system.

The background loops (scheduler, reconciler, event consumer), the state machine and the
metrics gauges act for every tenant at once; their queries live in `JobStore`, so no loop
writes SQL of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from sqlalchemy import ColumnElement, Text, cast, exists, or_, update
from sqlalchemy import select as select_columns
from sqlmodel import Session, col, func, select

from service.common import Page
from service.jobs.eta import JobProgress, StepSpan, TrialProgress
from service.models import Checkpoint, Deployment, FineTunedModel, Job, JobEvent, Trial
from service.models.status import ACTIVE, JobStatus
from service.repository import ScopedRepository

# (job id, tenant id, resources, search) of a job holding cluster capacity.
Holding = tuple[str, str, Mapping[str, Any] | None, Mapping[str, Any] | None]


class JobRepository(ScopedRepository[Job]):
    model = Job

    def count_in(self, statuses: Collection[JobStatus]) -> int:
        stmt = select(func.count()).where(
            Job.tenant_id == self.tenant_id, col(Job.status).in_(sorted(statuses))
        )
        return int(self.session.exec(stmt).one())

    def list_page(
        self,
        after: str | None,
        limit: int,
        *,
        metadata: Mapping[str, str] | None = None,
        no_metadata: bool = False,
    ) -> Page[Job] | None:
        """Newest first; only jobs whose metadata holds every pair of `metadata`, or (with
        `no_metadata`) the jobs created without metadata."""
        stmt = self._select()
        for key, value in (metadata or {}).items():
            stmt = stmt.where(self._metadata_is(key, value))
        if no_metadata:
            column = col(Job.metadata_)
            # None is stored as JSON null (SQLAlchemy's default), not SQL NULL.
            stmt = stmt.where(or_(column.is_(None), cast(column, Text) == "null"))
        return self.page(stmt, after, limit)

    def _metadata_is(self, key: str, value: str) -> ColumnElement[bool]:
        column = col(Job.metadata_)
        if self.session.get_bind().dialect.name == "sqlite":
            # Not json_extract: SQLite's JSON paths cannot name a key holding '"', and they
            # compare against the stored text, where json.dumps wrote non-ASCII keys as
            # \uXXXX escapes. json_each yields every key decoded.
            pairs = func.json_each(column).table_valued("key", "value")
            return exists().where(pairs.c.key == key, pairs.c.value == value)
        # PostgreSQL's ->> takes the key as a bound parameter: any key works.
        return column[key].as_string() == value

    def progress(self, jobs: Collection[Job]) -> dict[str, JobProgress]:
        """What each of `jobs` reported since it last started: the span of its training
        steps, and for a search each trial with its own. Two queries for any number of
        jobs (the second only when a search is among them)."""
        ids = sorted(j.id for j in jobs)
        if not ids:
            return {}
        data = col(JobEvent.data)
        # As numbers, not integers: PostgreSQL's cast of a text "3.0" to integer would fail
        # the whole read.
        step = data["step"].as_float()
        trial = data["trial_id"].as_string().label("trial")
        created = col(JobEvent.created_at)
        # SQLAlchemy's select: SQLModel's types at most four columns.
        stmt = (
            select_columns(
                col(JobEvent.job_id),
                trial,
                func.min(step),
                func.min(created),
                func.max(step),
                func.max(created),
                func.max(data["total_steps"].as_float()),
            )
            .join(Job, col(Job.id) == col(JobEvent.job_id))
            .where(
                col(JobEvent.tenant_id) == self.tenant_id,
                col(JobEvent.job_id).in_(ids),
                col(JobEvent.type) == "metrics",
                data["kind"].as_string() == "metrics",
                # This run's steps: a job run again starts over (from a checkpoint).
                created >= col(Job.started_at),
            )
            .group_by(col(JobEvent.job_id), trial)
        )
        spans: dict[tuple[str, str | None], StepSpan] = {}
        rows = self.session.connection().execute(stmt)
        for job_id, trial_id, first, first_at, last, last_at, total in rows:
            if first is None or last is None:
                continue
            spans[(job_id, trial_id)] = StepSpan(
                int(first),
                float(first_at),
                int(last),
                float(last_at),
                int(total) if total is not None else None,
            )
        trials: dict[str, list[TrialProgress]] = {}
        searches = sorted(j.id for j in jobs if j.search)
        if searches:
            of_searches = select(Trial).where(
                Trial.tenant_id == self.tenant_id, col(Trial.job_id).in_(searches)
            )
            for t in self.session.exec(of_searches):
                trials.setdefault(t.job_id, []).append(
                    TrialProgress(
                        t.status, t.created_at, t.updated_at, spans.get((t.job_id, t.trial_id))
                    )
                )
        return {
            job_id: JobProgress(steps=spans.get((job_id, None)), trials=trials.get(job_id, []))
            for job_id in ids
        }

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


class JobStore:
    """System-wide job queries, for the state machine and the background loops."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- the state machine ---------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self.session.get(Job, job_id)

    def compare_and_set(
        self, job_id: str, sources: Collection[JobStatus], values: dict[str, Any]
    ) -> bool:
        """One UPDATE that only matches while the job is in one of `sources`."""
        stmt = (
            update(Job)
            .where(col(Job.id) == job_id, col(Job.status).in_(sorted(sources)))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return self.session.exec(stmt).rowcount == 1

    def timing(self, job_id: str) -> tuple[float, float, float | None] | None:
        """created_at, updated_at (for a queued job: when it entered the queue), started_at."""
        stmt = select(Job.created_at, Job.updated_at, Job.started_at).where(col(Job.id) == job_id)
        row = self.session.exec(stmt).first()
        return None if row is None else (row[0], row[1], row[2])

    def tenant_of(self, job_id: str) -> str:
        return self.session.exec(select(Job.tenant_id).where(Job.id == job_id)).one()

    def touch(self, job_id: str, status: JobStatus, attempts: int, at: float) -> None:
        """Sets updated_at of the job while it is still in `status` at this attempt."""
        self.session.exec(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.status) == status)
            .where(col(Job.attempts) == attempts)
            .values(updated_at=at)
        )

    # -- the loops -----------------------------------------------------------------------

    def in_status(self, statuses: Collection[JobStatus]) -> list[Job]:
        return list(self.session.exec(select(Job).where(col(Job.status).in_(sorted(statuses)))))

    def ids_in(self, status: JobStatus) -> set[str]:
        # Ids only: the queue may hold thousands of jobs (whole rows, specs and all, made
        # the control plane's memory grow with the queue).
        return set(self.session.exec(select(Job.id).where(Job.status == status)))

    def among(self, ids: Iterable[str], status: JobStatus) -> list[Job]:
        """Those of `ids` that are in `status`."""
        stmt = select(Job).where(col(Job.id).in_(sorted(ids)), Job.status == status)
        return list(self.session.exec(stmt))

    def left(self, ids: Iterable[str], status: JobStatus) -> list[tuple[str, str]]:
        """(id, tenant) of those of `ids` that are no longer in `status`."""
        stmt = select(Job.id, Job.tenant_id).where(
            col(Job.id).in_(sorted(ids)), Job.status != status
        )
        return [(job_id, tenant_id) for job_id, tenant_id in self.session.exec(stmt)]

    def holdings(self) -> list[Holding]:
        """(id, tenant, resources, search) of every job that holds cluster capacity."""
        stmt = select(Job.id, Job.tenant_id, Job.resources, Job.search).where(
            col(Job.status).in_(sorted(ACTIVE))
        )
        return [(i, t, r, s) for i, t, r, s in self.session.exec(stmt)]

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs by (tenant, status)."""
        stmt = select(Job.tenant_id, Job.status, func.count()).group_by(
            col(Job.tenant_id), col(Job.status)
        )
        return {(tenant, status): int(n) for tenant, status, n in self.session.exec(stmt)}

    # -- what a run reports --------------------------------------------------------------

    def last_error(self, job_id: str) -> str | None:
        stmt = (
            select(JobEvent.message)
            .where(JobEvent.job_id == job_id, JobEvent.level == "error")
            .order_by(col(JobEvent.seq).desc())
        )
        return self.session.exec(stmt).first()

    def has_event(self, event_id: str) -> bool:
        return (
            self.session.exec(select(JobEvent.id).where(JobEvent.id == event_id)).first()
            is not None
        )

    def checkpoint_at(self, job_id: str, step: int) -> Checkpoint | None:
        stmt = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step_number == step)
        return self.session.exec(stmt).first()

    def checkpoints_of(self, job_id: str) -> list[Checkpoint]:
        """The job's checkpoints in the order its runs reported them, oldest first."""
        stmt = select(Checkpoint).where(Checkpoint.job_id == job_id)
        order = (col(Checkpoint.created_at), col(Checkpoint.step_number))
        return list(self.session.exec(stmt.order_by(*order)))

    def remove_checkpoint(self, row: Checkpoint) -> None:
        self.session.delete(row)
        self.session.flush()

    def deployed(self, tenant_id: str, model_ids: Collection[str]) -> set[str]:
        """Those of `model_ids` that the tenant has a deployment of."""
        stmt = select(Deployment.model).where(
            Deployment.tenant_id == tenant_id, col(Deployment.model).in_(sorted(model_ids))
        )
        return set(self.session.exec(stmt))

    def trial(self, job_id: str, trial_id: str) -> Trial | None:
        stmt = select(Trial).where(Trial.job_id == job_id, Trial.trial_id == trial_id)
        return self.session.exec(stmt).first()

    def model(self, model_id: str) -> FineTunedModel | None:
        return self.session.get(FineTunedModel, model_id)

    def add(self, obj: Checkpoint | Trial | FineTunedModel | JobEvent) -> None:
        self.session.add(obj)
        self.session.flush()

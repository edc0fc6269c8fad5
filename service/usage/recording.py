"""Writing usage: a job's when it ends, an inference request's once it has been answered.

A job's usage is written once, in the transaction of the `transition()` that ends it, with
ids made from the job's (and its trials') ids: a retried attempt, a redelivered event or a
restarted control plane cannot write it twice. Inference requests are many and a reply
must not wait for the database: `UsageMeter` gathers them and writes them in batches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from enum import StrEnum

from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.common import new_id, now
from service.jobs.repository import JobRepository, JobStore
from service.models import Job, Trial, UsageRecord
from service.models.status import ACTIVE
from service.usage.repository import UsageRepository
from workers.spec import Resources

log = logging.getLogger(__name__)


class UsageKind(StrEnum):
    TRAINING = "training"
    INFERENCE = "inference"


def job_record_id(job_id: str) -> str:
    return f"usage-{job_id}"


def record_job_usage(session: Session, job_id: str, at: float) -> None:
    """The ended job's usage (and each of its trials'), unless already written."""
    repo = UsageRepository(session)
    job = JobStore(session).get(job_id)
    if job is None or repo.exists(job_record_id(job_id)):
        return
    resources = _resources(job)
    trials = JobRepository(session, job.tenant_id).trials(job_id) if job.search else []
    records = [_trial_record(job, trial, resources) for trial in trials]
    if trials:
        # A search's trials carry its usage; the job's own row only marks it written.
        tokens, seconds = 0, 0.0
    else:
        # Ended before a result: what its last report said it had trained.
        tokens = (
            job.trained_tokens
            if job.trained_tokens is not None
            else repo.last_reported_tokens(job_id)
        )
        seconds = running_seconds(repo.status_changes(job_id), at)
    records.append(
        UsageRecord(
            id=job_record_id(job_id),
            tenant_id=job.tenant_id,
            kind=UsageKind.TRAINING,
            model=job.base_model_name(),
            job_id=job_id,
            trained_tokens=tokens,
            worker_seconds=seconds * resources.num_workers,
            gpu_seconds=seconds * resources.total_gpus,
            created_at=at,
        )
    )
    repo.add_all(records)


def running_seconds(changes: Sequence[tuple[float, str]], end: float) -> float:
    """How long the job's runs held the cluster: every stretch from a start (running) to
    the change that took it off (queued again, paused, ended); every attempt counts, as
    each held its workers."""
    total, since = 0.0, None
    for at, status in changes:
        on = status in ACTIVE
        if on and since is None:
            since = at
        elif not on and since is not None:
            total += max(0.0, at - since)
            since = None
    if since is not None:
        total += max(0.0, end - since)
    return total


def _resources(job: Job) -> Resources:
    found = (job.spec or {}).get("resources") or {}
    return Resources.model_validate(found, strict=False)


def _trial_record(job: Job, trial: Trial, resources: Resources) -> UsageRecord:
    seconds = max(0.0, trial.updated_at - trial.created_at)
    return UsageRecord(
        id=f"{job_record_id(job.id)}-{trial.trial_id}",
        tenant_id=job.tenant_id,
        kind=UsageKind.TRAINING,
        model=job.base_model_name(),
        job_id=job.id,
        trial_id=trial.trial_id,
        trained_tokens=int((trial.metrics or {}).get("trained_tokens") or 0),
        worker_seconds=seconds * resources.num_workers,
        gpu_seconds=seconds * resources.total_gpus,
        created_at=trial.updated_at,
    )


class UsageMeter:
    """Inference usage, written every `interval_s` in one transaction on its own thread.

    A request that the process answered but had not written when it was killed is lost
    (at most one interval's); a database that is away keeps them here until it is back.
    """

    def __init__(self, engine: Engine, interval_s: float = 0.5) -> None:
        self.engine = engine
        self.interval_s = interval_s
        # Requests answered since the last flush (id, tenant, model, prompt and completion
        # tokens, time), and the rows of a batch that could not be written.
        self._added: list[tuple[str, str, str, int, int, float]] = []
        self._pending: list[UsageRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, tenant_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        # A tuple here, the row in `flush`: building a table model costs the request
        # (in the event loop) more than the rest of its bookkeeping.
        row = (new_id("usage"), tenant_id, model, prompt_tokens, completion_tokens, now())
        with self._lock:
            self._added.append(row)

    def _take(self) -> list[UsageRecord]:
        with self._lock:
            added, self._added = self._added, []
            batch, self._pending = self._pending, []
        return batch + [
            UsageRecord(
                id=record_id,
                tenant_id=tenant_id,
                kind=UsageKind.INFERENCE,
                model=model,
                requests=1,
                prompt_tokens=prompt,
                completion_tokens=completion,
                created_at=at,
            )
            for record_id, tenant_id, model, prompt, completion, at in added
        ]

    def flush(self) -> None:
        batch = self._take()
        if not batch:
            return
        try:
            with Session(self.engine) as session:
                UsageRepository(session).add_all(batch)
                session.commit()
        except Exception:
            log.warning("could not write %d usage records; will retry", len(batch), exc_info=True)
            with self._lock:
                self._pending = batch + self._pending

    def start(self) -> None:
        # A thread per start: an app's lifespan may run more than once (tests do).
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="tuneplane-usage", daemon=True
        )
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

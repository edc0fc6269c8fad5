"""Keeps the database, Redis and Ray in step; the database is the truth.

- running/cancelling jobs: Ray's state decides how they end; a job whose Ray job is
  gone is retried (a new attempt, with an event saying so) up to `max_attempts`.
- queued jobs missing from Redis (Redis restarted or flushed) are enqueued again, and
  Redis entries for jobs that are no longer queued are dropped.
"""

from __future__ import annotations

import json
import logging
import time

import fsspec
import redis
from sqlalchemy import Engine
from sqlmodel import col, select

from service.config import Settings
from service.db import new_session
from service.jobs.queueing import enqueue
from service.jobs.state import add_event, transition
from service.models import Job, JobEvent
from service.queue import FairQueue
from service.ray_backend import ComputeBackend, submission_id
from service.scheduling.events import complete_job
from service.scheduling.scheduler import Dispatcher
from workers.report import EVENTS_STREAM

log = logging.getLogger(__name__)
# What workers.run_job publishes under the job's output_uri before reporting its result.
ARTIFACT_MANIFEST = "model/tuneplane.json"
# After Ray says a job succeeded, its result event may still be in flight to the consumer:
# it is waited for this long at most, and not at all once the event stream is drained.
RESULT_GRACE_S = 20.0


class Reconciler:
    def __init__(
        self,
        engine: Engine,
        queue: FairQueue,
        backend: ComputeBackend,
        dispatcher: Dispatcher,
        settings: Settings,
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.backend = backend
        self.dispatcher = dispatcher
        self.settings = settings
        self._succeeded_seen: dict[str, float] = {}

    def run_once(self) -> None:
        self.reconcile_active()
        self.reconcile_queue()

    def reconcile_queue(self) -> None:
        # Ids only: the queue may hold thousands of jobs, and this runs every few seconds
        # (whole rows, specs and all, made the control plane's memory grow with the queue).
        with new_session(self.engine) as s:
            queued = set(s.exec(select(Job.id).where(Job.status == "queued")))
        in_redis = self.queue.queued_ids()
        missing = queued - in_redis
        if missing:
            with new_session(self.engine) as s:
                rows = s.exec(
                    select(Job).where(col(Job.id).in_(sorted(missing)), Job.status == "queued")
                ).all()
                for job in rows:
                    enqueue(self.queue, job)
                    log.info("re-enqueued %s (missing from Redis)", job.id)
                    add_event(
                        s,
                        job.id,
                        job.tenant_id,
                        "The job was missing from the Redis queue (Redis lost its data, or "
                        "was unreachable when the job was queued); it is queued again in its "
                        "place",
                        level="warn",
                    )
                s.commit()
        stale = in_redis - queued
        if stale:
            with new_session(self.engine) as s:
                left = s.exec(
                    select(Job.id, Job.tenant_id).where(
                        col(Job.id).in_(sorted(stale)), Job.status != "queued"
                    )
                ).all()
            # Re-read: only drop entries of jobs that really left the queued state.
            for job_id, tenant_id in left:
                self.queue.remove(job_id, tenant_id)

    def reconcile_active(self) -> None:
        with new_session(self.engine) as s:
            active = list(s.exec(select(Job).where(col(Job.status).in_(("running", "cancelling")))))
        for job in active:
            try:
                self._reconcile_job(job)
            except Exception:
                log.exception("reconciling %s failed; will retry", job.id)

    def _reconcile_job(self, job: Job) -> None:
        if job.id in self.dispatcher.submitting:
            return  # being submitted right now: Ray may not list it yet
        sid = submission_id(job.id, job.attempts)
        state = self.backend.state(sid)
        age = time.time() - (job.updated_at or job.created_at)
        if job.status == "cancelling":
            if state in ("PENDING", "RUNNING"):
                self.backend.stop(sid)
                return
            with new_session(self.engine) as s:
                transition(
                    s, job.id, "cancelled", expected=("cancelling",), message="Job cancelled"
                )
                s.commit()
            return
        if state in ("PENDING", "RUNNING"):
            return
        if state == "MISSING":
            if age < self.settings.dispatch_grace_s:
                return  # just dispatched; Ray may not list it yet
            self.dispatcher.requeue_or_fail(
                job.id,
                job.tenant_id,
                job.attempts,
                f"the Ray job {sid} was lost (Ray no longer knows it: its head restarted, or "
                "the control plane stopped before it could submit it)",
            )
            return
        if state == "SUCCEEDED":
            # Success is recorded by the result event: while it may still be on its way,
            # wait for it (at most RESULT_GRACE_S); once the stream is drained it is lost.
            first = self._succeeded_seen.setdefault(job.id, time.time())
            if time.time() - first < RESULT_GRACE_S and not self._events_drained():
                return
            self._succeeded_seen.pop(job.id, None)
            if not self._recover_result(job):
                self._fail(
                    job,
                    "finished_without_result",
                    "the training run ended without publishing a model",
                )
            return
        # FAILED or STOPPED without a cancel: a worker crash the run did not survive.
        reason = self.backend.message(sid) or f"the Ray job ended {state}"
        self._fail(job, "training_failed", f"{self._last_error(job.id) or reason}")

    def _events_drained(self) -> bool:
        """Every worker event in Redis is delivered and stored: none is still on its way."""
        r = self.queue.r
        try:
            if not r.exists(EVENTS_STREAM):
                return True  # Redis lost its data: whatever was in flight is gone
            last = r.xinfo_stream(EVENTS_STREAM)["last-generated-id"]
            groups = r.xinfo_groups(EVENTS_STREAM)
        except redis.RedisError:
            return False  # cannot tell: wait for the grace to end
        group = next((g for g in groups if g["name"] == self.settings.events_group), None)
        return (
            group is not None and int(group["pending"]) == 0 and group["last-delivered-id"] == last
        )

    def _recover_result(self, job: Job) -> bool:
        """The result event was lost (Redis flushed, say), but the worker publishes a
        manifest beside the model before it reports: complete the job from that."""
        output_uri = str((job.spec or {}).get("output_uri", ""))
        manifest_uri = f"{output_uri.rstrip('/')}/{ARTIFACT_MANIFEST}"
        try:
            with fsspec.open(manifest_uri, "r", encoding="utf-8") as fh:
                manifest = json.load(fh)
        except (OSError, ValueError):
            return False
        metrics = dict(manifest.get("metrics") or {})
        trained = metrics.get("trained_tokens")
        with new_session(self.engine) as s:
            current = s.get(Job, job.id)
            if current is None:
                return False
            done = complete_job(
                s,
                current,
                artifact_uri=manifest_uri.rsplit("/", 1)[0],
                trained_tokens=int(trained) if trained is not None else None,
                metrics=metrics,
                note=" (its result event was lost; recovered from the published artifact)",
            )
            s.commit()
        return done

    def _last_error(self, job_id: str) -> str | None:
        with new_session(self.engine) as s:
            stmt = (
                select(JobEvent.message)
                .where(JobEvent.job_id == job_id, JobEvent.level == "error")
                .order_by(col(JobEvent.seq).desc())
            )
            return s.exec(stmt).first()

    def _fail(self, job: Job, code: str, message: str) -> None:
        self._succeeded_seen.pop(job.id, None)
        with new_session(self.engine) as s:
            transition(
                s,
                job.id,
                "failed",
                expected=("running",),
                level="error",
                message=f"The job failed: {message}",
                error={"code": code, "message": message, "param": None},
            )
            s.commit()

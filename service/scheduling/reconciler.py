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
from dataclasses import dataclass, field

import fsspec
import redis
from pydantic import ValidationError
from sqlalchemy import Engine

from service.config import Settings
from service.db import new_session
from service.jobs.control import request_pause
from service.jobs.lifecycle import JobLifecycle
from service.jobs.queueing import enqueue
from service.models import Job
from service.models.status import JobStatus
from service.queue import FairQueue
from service.ray_backend import ComputeBackend, submission_id
from service.scheduling.scheduler import Dispatcher
from workers.records import ResultData
from workers.report import EVENTS_STREAM
from workers.spec import MANIFEST_FILE

log = logging.getLogger(__name__)
# What workers.publish writes under the job's output_uri before the job reports its result.
ARTIFACT_MANIFEST = f"model/{MANIFEST_FILE}"
# After Ray says a job succeeded, its result event may still be in flight to the consumer:
# it is waited for this long at most, and not at all once the event stream is drained.
RESULT_GRACE_S = 20.0


@dataclass(eq=False)
class Reconciler:
    engine: Engine
    queue: FairQueue
    backend: ComputeBackend
    dispatcher: Dispatcher
    settings: Settings
    # When Ray first said a job succeeded whose result event has not come yet.
    _succeeded_seen: dict[str, float] = field(default_factory=dict, init=False)

    def run_once(self) -> None:
        self.reconcile_active()
        self.reconcile_queue()

    def reconcile_queue(self) -> None:
        with new_session(self.engine) as s:
            queued = JobLifecycle(s).queued_ids()
        in_redis = self.queue.queued_ids()
        missing = queued - in_redis
        if missing:
            with new_session(self.engine) as s:
                jobs = JobLifecycle(s)
                for job in jobs.queued_among(missing):
                    enqueue(self.queue, job)
                    log.info("re-enqueued %s (missing from Redis)", job.id)
                    jobs.warn(
                        job,
                        "The job was missing from the Redis queue (Redis lost its data, or "
                        "was unreachable when the job was queued); it is queued again in its "
                        "place",
                    )
                s.commit()
        stale = in_redis - queued
        if stale:
            with new_session(self.engine) as s:
                left = JobLifecycle(s).left_queue(stale)
            # Re-read: only drop entries of jobs that really left the queued state.
            for job_id, tenant_id in left:
                self.queue.remove(job_id, tenant_id)

    def reconcile_active(self) -> None:
        with new_session(self.engine) as s:
            active = JobLifecycle(s).active()
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
        if job.status == JobStatus.CANCELLING:
            if state in ("PENDING", "RUNNING"):
                self.backend.stop(sid)
                return
            with new_session(self.engine) as s:
                JobLifecycle(s).cancelled(job.id)
                s.commit()
            return
        if job.status == JobStatus.PAUSING:
            self._pausing(job, sid, state)
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
                resumes=job.pauses,
                why=f"the Ray job {sid} was lost (Ray no longer knows it: its head restarted, or "
                "the control plane stopped before it could submit it)",
            )
            return
        if state == "SUCCEEDED":
            # Success is recorded by the result event: while it may still be on its way,
            # wait for it; once the stream is drained it is lost.
            if self._awaiting_events(job):
                return
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

    def _awaiting_events(self, job: Job) -> bool:
        """Whether a run Ray says succeeded may still have events on their way (its result,
        its last checkpoint): True until the stream is drained, for RESULT_GRACE_S at most
        from the first time it was seen."""
        first = self._succeeded_seen.setdefault(job.id, time.time())
        if time.time() - first < RESULT_GRACE_S and not self._events_drained():
            return True
        self._succeeded_seen.pop(job.id, None)
        return False

    def _pausing(self, job: Job, sid: str, state: str) -> None:
        """A pausing job is paused once its Ray job has ended (its resources are free then),
        not when the run says it stopped."""
        if state == "RUNNING":
            # Idempotent: a control plane that died between the change and the request
            # still gets its request to the run.
            request_pause(job)
            return
        if state == "PENDING":
            # Not started: nothing to save. Stopped, it ends STOPPED and is paused below.
            self.backend.stop(sid)
            return
        note = ""
        if state == "SUCCEEDED":
            # Its result (it finished before it could pause) or its last checkpoint event
            # may still be on its way.
            if self._awaiting_events(job) or self._recover_result(job):
                return
        else:
            # Stopped, lost or crashed before it said it paused: Ray Train keeps the run's
            # newest checkpoint, and the next run of the job goes on from that.
            note = (
                f" (its run ended {state.lower()} before confirming the pause; resuming goes "
                "on from its newest checkpoint)"
            )
        with new_session(self.engine) as s:
            jobs = JobLifecycle(s)
            step = None if job.search else jobs.newest_checkpoint_step(job.id)
            jobs.paused(job.id, step, note=note)
            s.commit()

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
        try:
            result = ResultData(
                artifact_uri=manifest_uri.rsplit("/", 1)[0],
                adapter=str(manifest.get("adapter", "")),
                trained_tokens=int(metrics.get("trained_tokens", 0)),
                steps=int(metrics.get("step", 0)),
                metrics=metrics,
            )
        except (ValidationError, TypeError, ValueError):
            return False
        with new_session(self.engine) as s:
            jobs = JobLifecycle(s)
            current = jobs.job(job.id)
            if current is None:
                return False
            done = jobs.succeed(
                current,
                result,
                note=" (its result event was lost; recovered from the published artifact)",
            )
            s.commit()
        return done

    def _last_error(self, job_id: str) -> str | None:
        with new_session(self.engine) as s:
            return JobLifecycle(s).last_error(job_id)

    def _fail(self, job: Job, code: str, message: str) -> None:
        self._succeeded_seen.pop(job.id, None)
        with new_session(self.engine) as s:
            JobLifecycle(s).fail(job.id, code, message)
            s.commit()

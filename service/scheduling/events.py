"""Consumes the workers' Redis event stream into the database.

At-least-once: entries are acknowledged only after their rows are committed, and each
stored event's id derives from the record's own id, so an entry seen twice (a replica died
between commit and XACK) or a record sent twice (a worker retried after Redis took it but
the reply was lost) is stored once.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from sqlalchemy import Engine
from sqlmodel import Session

from service.db import new_session
from service.faults import crash_point
from service.jobs.lifecycle import JobLifecycle
from service.jobs.state import EventType, add_event
from service.models import Job
from service.models.status import TERMINAL, JobStatus
from workers.records import CheckpointData, ResultData, StatusData, TrialData
from workers.report import EVENTS_STREAM, EventRecord
from workers.spec import RUN_FAILED

log = logging.getLogger(__name__)
# Entries a dead consumer read but never acknowledged are taken over after this long.
RECLAIM_IDLE_MS = 30_000


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# What a step or validation pass reports beside its loss, as a message names it: a
# classifier's accuracy, DPO's reward accuracy and margin (suffixes of train_ / eval_).
_BESIDE_LOSS = (
    ("accuracy", "accuracy"),
    ("reward_accuracy", "reward accuracy"),
    ("reward_margin", "reward margin"),
)


def _beside_loss(d: dict[str, Any], prefix: str) -> str:
    return "".join(
        f", {name}={_fmt(d[prefix + key])}" for key, name in _BESIDE_LOSS if prefix + key in d
    )


def describe(record: EventRecord) -> str:
    """The user-facing message for a worker event, in the style of OpenAI's events."""
    d = record.data
    if record.type == "metrics":
        text = f"Step {d.get('step')}: training loss={_fmt(d.get('train_loss'))}"
        text += _beside_loss(d, "train_")
        if "learning_rate" in d:
            text += f", learning rate={d['learning_rate']:.2e}"
        return text
    if record.type == "eval":
        text = f"Step {d.get('step')}: validation loss={_fmt(d.get('eval_loss'))}"
        return text + _beside_loss(d, "eval_")
    if record.type == "checkpoint":
        return f"Checkpoint saved at step {d.get('step')}"
    if record.message:
        return record.message
    if record.type == "result":
        return "Training finished; the model is ready"
    if record.type == "trial":
        return f"Trial {d.get('trial_id')}: {d.get('status')}"
    return f"{record.type}: {d}"


class EventConsumer:
    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        group: str,
        consumer: str,
        reclaim_idle_ms: int = RECLAIM_IDLE_MS,
        crash_at: str | None = None,
    ) -> None:
        self.engine = engine
        self.reclaim_idle_ms = reclaim_idle_ms
        # Fault injection (service/faults.py); None outside the reliability tests.
        self.crash_at = crash_at
        # redis-py types every reply as a union over sync/async and bytes/str clients.
        self.r: Any = client
        self.group = group
        self.consumer = consumer
        self._group_ready = False
        # The group vanished under us (Redis lost its data): say so once it is back.
        self._lost = False

    def ensure_group(self) -> None:
        try:
            # From the stream's start: events written before the first consumer are kept.
            self.r.xgroup_create(EVENTS_STREAM, self.group, id="0", mkstream=True)
            if self._lost:
                # This replica re-created the group Redis lost: it alone tells the jobs.
                self._note_lost_events()
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True
        self._lost = False

    def _note_lost_events(self) -> None:
        with new_session(self.engine) as s:
            jobs = JobLifecycle(s)
            for job in jobs.active():
                jobs.warn(
                    job,
                    "Redis lost its data (it restarted empty or was flushed): events the "
                    "training run sent meanwhile may be missing here; the run itself goes on",
                )
            s.commit()

    def poll(self, block_ms: int = 1000, count: int = 200) -> int:
        """Store one batch of events; returns how many entries were handled."""
        if not self._group_ready:
            self.ensure_group()
        try:
            claimed = self.r.xautoclaim(
                EVENTS_STREAM, self.group, self.consumer, self.reclaim_idle_ms, "0-0", count=count
            )
            entries: list[tuple[str, dict[str, str]]] = list(claimed[1])
            if not entries:
                reply = self.r.xreadgroup(
                    self.group, self.consumer, {EVENTS_STREAM: ">"}, count=count, block=block_ms
                )
                entries = [e for _, batch in reply for e in batch] if reply else []
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data: the group goes with it
                self._group_ready = False
                self._lost = True
                return 0
            raise
        entries = [(eid, fields) for eid, fields in entries if fields]
        if not entries:
            return 0
        kinds = {str(fields.get("type", "")) for _, fields in entries}
        with new_session(self.engine) as s:
            for entry_id, fields in entries:
                try:
                    self.apply(s, entry_id, EventRecord.from_stream_fields(fields))
                except ValueError:
                    log.exception("dropping malformed event %s", entry_id)
            crash_point(self.crash_at, "events.before_commit", kinds)
            s.commit()
        crash_point(self.crash_at, "events.after_commit", kinds)
        ids = [eid for eid, _ in entries]
        # Stored, so gone from the stream too: Redis holds the backlog still to be stored,
        # not every event ever sent (up to the stream's cap, hundreds of MB).
        pipe = self.r.pipeline(transaction=False)
        pipe.xack(EVENTS_STREAM, self.group, *ids)
        pipe.xdel(EVENTS_STREAM, *ids)
        pipe.execute()
        return len(entries)

    def apply(self, s: Session, entry_id: str, record: EventRecord) -> None:
        """Store one record; a record whose data does not validate raises ValueError."""
        jobs = JobLifecycle(s)
        job = jobs.job(record.job_id)
        if job is None or job.tenant_id != record.tenant_id:
            log.warning("event %s for unknown job %s", entry_id, record.job_id)
            return
        # The record's own id: the same record in two stream entries (the worker resent it
        # after a lost reply) and one entry delivered twice are both stored once.
        event_id = f"ftevent-{record.id}"
        if jobs.has_event(event_id):
            return  # seen before
        # Validated at the boundary, before anything is stored.
        typed = _typed(record)
        kind: EventType = "metrics" if record.type in ("metrics", "eval") else "message"
        event = add_event(
            s,
            job.id,
            job.tenant_id,
            describe(record),
            level=record.level,
            type_=kind,
            data={"kind": record.type, **record.data},
            created_at=record.created_at,
        )
        event.id = event_id
        s.flush()
        if isinstance(typed, TrialData):
            jobs.trial(job, typed, record.created_at)
        elif isinstance(typed, CheckpointData):
            jobs.checkpoint(job, typed, record.created_at)
        elif isinstance(typed, ResultData):
            jobs.succeed(job, typed)
        elif isinstance(typed, StatusData) and typed.status == RUN_FAILED:
            self._failed(jobs, job, record.message, typed)

    def _failed(self, jobs: JobLifecycle, job: Job, message: str, data: StatusData) -> None:
        if job.status in TERMINAL:
            return
        if job.status == JobStatus.CANCELLING:
            # A run interrupted by a cancel reports a failure; the user asked for it.
            jobs.cancelled(job.id)
            return
        if data.retryable and job.status in (JobStatus.RUNNING, JobStatus.PAUSING):
            # An internal failure (the Ray head or a node went away, say): the reconciler
            # sees the Ray job end and fails the job with this message, or finds it lost
            # with its cluster and runs it again.
            return
        message = message or "Training failed"
        jobs.fail(
            job.id,
            data.code or "training_failed",
            message,
            param=data.param,
            expected=(JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.PAUSING),
        )


def _typed(record: EventRecord) -> TrialData | CheckpointData | ResultData | StatusData | None:
    """The record's data as its typed model (pydantic's ValidationError is a ValueError)."""
    if record.type == "trial":
        return TrialData.model_validate(record.data)
    if record.type == "checkpoint":
        return CheckpointData.model_validate(record.data)
    if record.type == "result":
        return ResultData.model_validate(record.data)
    if record.type == "status":
        return StatusData.model_validate(record.data)
    return None

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
from sqlmodel import Session, col, select

from service.common import now
from service.db import new_session
from service.faults import crash_point
from service.jobs.state import TERMINAL, add_event, transition
from service.models import Checkpoint, FineTunedModel, Job, JobEvent, Tenant, Trial
from service.registry.service import fine_tuned_model_id
from workers.report import EVENTS_STREAM, EventRecord

log = logging.getLogger(__name__)
# Entries a dead consumer read but never acknowledged are taken over after this long.
RECLAIM_IDLE_MS = 30_000


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def describe(record: EventRecord) -> str:
    """The user-facing message for a worker event, in the style of OpenAI's events."""
    d = record.data
    if record.type == "metrics":
        text = f"Step {d.get('step')}: training loss={_fmt(d.get('train_loss'))}"
        if "learning_rate" in d:
            text += f", learning rate={d['learning_rate']:.2e}"
        return text
    if record.type == "eval":
        text = f"Step {d.get('step')}: validation loss={_fmt(d.get('eval_loss'))}"
        if "eval_accuracy" in d:
            text += f", accuracy={_fmt(d['eval_accuracy'])}"
        return text
    if record.type == "checkpoint":
        return f"Checkpoint saved at step {d.get('step')}"
    if record.message:
        return record.message
    if record.type == "result":
        return "Training finished; the model is ready"
    if record.type == "trial":
        return f"Trial {d.get('trial_id')}: {d.get('status')}"
    return f"{record.type}: {d}"


def model_id_of(s: Session, job: Job) -> str:
    tenant = s.get(Tenant, job.tenant_id)
    name = tenant.name if tenant else job.tenant_id
    return fine_tuned_model_id(job.model, name, job.suffix, job.id)


def complete_job(
    s: Session,
    job: Job,
    *,
    artifact_uri: str,
    trained_tokens: int | None,
    metrics: dict[str, Any],
    note: str = "",
    search_result: dict[str, Any] | None = None,
) -> bool:
    """Register the job's model and mark it succeeded (once, however often it is called)."""
    if job.status in TERMINAL:
        return False
    model_id = model_id_of(s, job)
    if s.get(FineTunedModel, model_id) is None:
        s.add(
            FineTunedModel(
                id=model_id,
                tenant_id=job.tenant_id,
                job_id=job.id,
                base_model=job.model,
                task=job.task,
                adapter_type=str((job.adapter or {}).get("type", "lora")),
                artifact_uri=artifact_uri,
                created_at=now(),
            )
        )
        s.flush()
    return transition(
        s,
        job.id,
        "succeeded",
        expected=("running", "cancelling"),
        message=f"The job has successfully completed; model {model_id} is ready{note}",
        data={"fine_tuned_model": model_id, "metrics": metrics},
        fine_tuned_model=model_id,
        trained_tokens=trained_tokens,
        search_result=search_result,
        result={"metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)}},
    )


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
            active = s.exec(select(Job).where(col(Job.status).in_(("running", "cancelling"))))
            for job in active:
                add_event(
                    s,
                    job.id,
                    job.tenant_id,
                    "Redis lost its data (it restarted empty or was flushed): events the "
                    "training run sent meanwhile may be missing here; the run itself goes on",
                    level="warn",
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
        self.r.xack(EVENTS_STREAM, self.group, *[eid for eid, _ in entries])
        return len(entries)

    def apply(self, s: Session, entry_id: str, record: EventRecord) -> None:
        job = s.get(Job, record.job_id)
        if job is None or job.tenant_id != record.tenant_id:
            log.warning("event %s for unknown job %s", entry_id, record.job_id)
            return
        # The record's own id: the same record in two stream entries (the worker resent it
        # after a lost reply) and one entry delivered twice are both stored once.
        event_id = f"ftevent-{record.id}"
        if s.exec(select(JobEvent.id).where(JobEvent.id == event_id)).first() is not None:
            return  # seen before
        kind = "metrics" if record.type in ("metrics", "eval") else "message"
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
        if record.type == "trial":
            self._trial(s, job, record)
        elif record.type == "checkpoint":
            self._checkpoint(s, job, record)
        elif record.type == "result":
            self._succeeded(s, job, record)
        elif record.type == "status" and record.data.get("status") == "failed":
            self._failed(s, job, record)

    def _checkpoint(self, s: Session, job: Job, record: EventRecord) -> None:
        step = int(record.data.get("step", 0))
        existing = s.exec(
            select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step_number == step)
        ).first()
        if existing is not None:
            return
        metrics = {k: v for k, v in record.data.items() if k != "checkpoint_uri"}
        s.add(
            Checkpoint(
                id=f"ftckpt-{job.id.removeprefix('ftjob-')}-{step}",
                job_id=job.id,
                tenant_id=job.tenant_id,
                step_number=step,
                metrics={"step": step, **metrics},
                uri=str(record.data.get("checkpoint_uri", "")),
                fine_tuned_model_checkpoint=f"{model_id_of(s, job)}:ckpt-step-{step}",
                created_at=record.created_at,
            )
        )
        s.flush()

    def _trial(self, s: Session, job: Job, record: EventRecord) -> None:
        d = record.data
        trial_id = str(d.get("trial_id", ""))
        if not trial_id:
            return
        row = s.exec(
            select(Trial).where(Trial.job_id == job.id, Trial.trial_id == trial_id)
        ).first()
        if row is None:
            row = Trial(
                id=f"fttrial-{job.id.removeprefix('ftjob-')}-{trial_id}",
                job_id=job.id,
                tenant_id=job.tenant_id,
                trial_id=trial_id,
                status="running",
                created_at=record.created_at,
                updated_at=record.created_at,
            )
        # Entries of one job arrive in order, but a redelivered old one must not win.
        if record.created_at >= row.updated_at:
            row.status = str(d.get("status", row.status))
            row.params = dict(d.get("params") or row.params or {})
            row.metrics = dict(d.get("metrics") or row.metrics or {})
            best = d.get("best_metric")
            row.best_metric = float(best) if best is not None else row.best_metric
            row.iterations = int(d.get("iterations", row.iterations))
            row.checkpoint_uri = d.get("checkpoint_uri") or row.checkpoint_uri
            row.updated_at = record.created_at
        s.add(row)
        s.flush()

    def _succeeded(self, s: Session, job: Job, record: EventRecord) -> None:
        trained = record.data.get("trained_tokens")
        best = record.data.get("best_trial")
        complete_job(
            s,
            job,
            artifact_uri=str(record.data.get("artifact_uri", "")),
            trained_tokens=int(trained) if trained is not None else None,
            metrics=dict(record.data.get("metrics") or {}),
            search_result=dict(best) if isinstance(best, dict) else None,
        )

    def _failed(self, s: Session, job: Job, record: EventRecord) -> None:
        if job.status in TERMINAL:
            return
        if job.status == "cancelling":
            # A run interrupted by a cancel reports a failure; the user asked for it.
            transition(s, job.id, "cancelled", expected=("cancelling",), message="Job cancelled")
            return
        if record.data.get("retryable") and job.status == "running":
            # An internal failure (the Ray head or a node went away, say): the reconciler
            # sees the Ray job end and fails the job with this message, or finds it lost
            # with its cluster and runs it again.
            return
        message = record.message or "Training failed"
        transition(
            s,
            job.id,
            "failed",
            expected=("running", "cancelling"),
            level="error",
            message=f"The job failed: {message}",
            error={"code": str(record.data.get("code", "training_failed")), "message": message,
                   "param": record.data.get("param")},
        )  # fmt: skip

"""What the background loops do to jobs, for every tenant: start, requeue, fail, complete,
and store what a run reports. Each change is a `transition()`; each query is `JobStore`'s.

The scheduler, the reconciler and the event consumer open a session, call these, commit.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import Any

from sqlmodel import Session

from service.db import on_commit
from service.jobs import retention
from service.jobs.repository import Holding, JobStore
from service.jobs.state import NewModel, add_event, transition
from service.models import Checkpoint, Job, Trial
from service.models.status import ACTIVE, TERMINAL, WAITING, JobStatus
from service.registry.checkpoints import checkpoint_model_id, removal_event_id
from service.registry.service import fine_tuned_model_id
from service.storage import missing_model_files
from service.tenants.repository import TenantRepository
from workers.records import CheckpointData, ResultData, TrialData
from workers.spec import JobSpec

log = logging.getLogger(__name__)
# A job whose run reported a model that is not in the store.
MODEL_MISSING = "model_missing"


class JobLifecycle:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.store = JobStore(session)

    # -- reads -----------------------------------------------------------------------------

    def job(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def active(self) -> list[Job]:
        """Jobs on the cluster (running, or being cancelled)."""
        return self.store.in_status(ACTIVE)

    def holdings(self) -> list[Holding]:
        return self.store.holdings()

    def queued_ids(self) -> set[str]:
        return self.store.ids_in(JobStatus.QUEUED)

    def queued_among(self, ids: Iterable[str]) -> list[Job]:
        return self.store.among(ids, JobStatus.QUEUED)

    def left_queue(self, ids: Iterable[str]) -> list[tuple[str, str]]:
        return self.store.left(ids, JobStatus.QUEUED)

    def is_queued(self, job_id: str) -> bool:
        job = self.store.get(job_id)
        return job is not None and job.status == JobStatus.QUEUED

    def last_error(self, job_id: str) -> str | None:
        return self.store.last_error(job_id)

    def has_event(self, event_id: str) -> bool:
        return self.store.has_event(event_id)

    def newest_checkpoint_step(self, job_id: str) -> int | None:
        newest = self.store.checkpoints_of(job_id)
        return newest[-1].step_number if newest else None

    def model_id(self, job: Job) -> str:
        tenant = TenantRepository(self.session).get(job.tenant_id)
        return fine_tuned_model_id(
            job.base_model_name(), tenant.name if tenant else job.tenant_id, job.suffix, job.id
        )

    # -- changes ---------------------------------------------------------------------------

    def _move(
        self,
        job_id: str,
        to: JobStatus,
        expected: Collection[JobStatus],
        message: str,
        **fields: Any,
    ) -> bool:
        return transition(self.session, job_id, to, expected=expected, message=message, **fields)

    def start(self, job_id: str, message: str, data: dict[str, Any], **fields: Any) -> bool:
        return self._move(
            job_id, JobStatus.RUNNING, (JobStatus.QUEUED,), message, data=data, **fields
        )

    def submitted(self, job_id: str, attempt: int, at: float) -> None:
        """The grace a dispatched job has to show up on Ray counts from `at`."""
        self.store.touch(job_id, JobStatus.RUNNING, attempt, at)

    def requeue(self, job_id: str, message: str, **fields: Any) -> Job | None:
        """A running job goes back to the queue; the job when it moved."""
        moved = transition(
            self.session,
            job_id,
            JobStatus.QUEUED,
            expected=(JobStatus.RUNNING,),
            level="warn",
            message=message,
            **fields,
        )
        return self.store.get(job_id) if moved else None

    def fail(
        self,
        job_id: str,
        code: str,
        why: str,
        *,
        message: str | None = None,
        param: str | None = None,
        expected: Collection[JobStatus] = (JobStatus.RUNNING,),
    ) -> bool:
        """Fail the job with `code` and `why` (the error users see); `message`: the event's
        text when it should say more than "The job failed: <why>"."""
        return transition(
            self.session,
            job_id,
            JobStatus.FAILED,
            expected=expected,
            level="error",
            message=message or f"The job failed: {why}",
            error={"code": code, "message": why, "param": param},
        )

    def cancel_unstarted(self, job_id: str) -> bool:
        """A user's cancel of a job that never started: it ends at once."""
        return self._move(job_id, JobStatus.CANCELLED, WAITING, "Job cancelled before it started")

    def stop(self, job_id: str) -> bool:
        """A user's cancel of a running (or pausing) job: cancelling until its Ray job has
        stopped."""
        return self._move(
            job_id,
            JobStatus.CANCELLING,
            (JobStatus.RUNNING, JobStatus.PAUSING),
            "Cancellation requested; stopping the training run",
        )

    def cancel_paused(self, job_id: str) -> bool:
        """A user's cancel of a paused job: nothing runs, so it ends at once."""
        return self._move(
            job_id, JobStatus.CANCELLED, (JobStatus.PAUSED,), "Job cancelled while paused"
        )

    # -- pause and resume ------------------------------------------------------------------

    def pause(self, job_id: str) -> bool:
        """A user's pause: the run saves a checkpoint at its next step and stops."""
        return self._move(
            job_id,
            JobStatus.PAUSING,
            (JobStatus.RUNNING,),
            "Pause requested; the run saves a checkpoint at its next step and stops",
        )

    def paused(self, job_id: str, step: int | None, note: str = "") -> bool:
        """The run of a pausing job has stopped; `step`: where the checkpoint it saved is."""
        where = f" at step {step}" if step is not None else ""
        return transition(
            self.session,
            job_id,
            JobStatus.PAUSED,
            expected=(JobStatus.PAUSING,),
            level="warn" if note else "info",
            message=f"Job paused{where}{note}; resume it to go on from there",
            data={"step": step} if step is not None else None,
        )

    def resume(self, job: Job) -> bool:
        """A paused job goes back to the queue; its next run goes on from its checkpoint.
        The attempt it starts is a resume, not a retry (`pauses`)."""
        return self._move(
            job.id,
            JobStatus.QUEUED,
            (JobStatus.PAUSED,),
            "Job resumed; it is queued again and goes on from where it paused",
            pauses=job.pauses + 1,
        )

    def cancelled(self, job_id: str) -> bool:
        """The Ray job of a job being cancelled has stopped."""
        return self._move(job_id, JobStatus.CANCELLED, (JobStatus.CANCELLING,), "Job cancelled")

    def succeed(self, job: Job, result: ResultData, note: str = "") -> bool:
        """Register the job's model and mark it succeeded (once, however often it is called);
        a model whose files are not in the store fails the job instead (`MODEL_MISSING`)."""
        if job.status in TERMINAL:
            return False
        model_id = self.model_id(job)
        # Never a succeeded job whose model cannot be loaded: the run is over, so waiting
        # would not bring the files back (a store that cannot be reached raises instead,
        # and the caller tries again later).
        missing = missing_model_files(result.artifact_uri)
        if missing is not None:
            log.error(
                "job %s reported its model at %s, but %s; failing the job",
                job.id,
                result.artifact_uri,
                missing,
            )
            return self.fail(
                job.id,
                MODEL_MISSING,
                f"Training finished, but its model is missing from the artifact store "
                f"({missing}); no model was registered. Run the job again.",
                expected=ACTIVE,
            )
        return transition(
            self.session,
            job.id,
            JobStatus.SUCCEEDED,
            expected=ACTIVE,
            message=f"The job has successfully completed; model {model_id} is ready{note}",
            data={"fine_tuned_model": model_id, "metrics": result.metrics},
            model=NewModel(id=model_id, artifact_uri=result.artifact_uri),
            trained_tokens=result.trained_tokens,
            search_result=result.best_trial.model_dump() if result.best_trial else None,
            result={
                "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
            },
        )

    def warn(self, job: Job, message: str) -> None:
        add_event(self.session, job.id, job.tenant_id, message, level="warn")

    # -- what a run reports ------------------------------------------------------------------

    def checkpoint(self, job: Job, data: CheckpointData, at: float) -> None:
        if self.store.checkpoint_at(job.id, data.step) is not None:
            return
        # Flat, as OpenAI's checkpoint metrics are: the numbers reported with it.
        metrics: dict[str, Any] = {
            k: v for k, v in data.metrics.items() if isinstance(v, int | float)
        }
        if data.trial_id is not None:
            metrics["trial_id"] = data.trial_id
        self.store.add(
            Checkpoint(
                id=f"ftckpt-{job.id.removeprefix('ftjob-')}-{data.step}",
                job_id=job.id,
                tenant_id=job.tenant_id,
                step_number=data.step,
                metrics={"step": data.step, **metrics},
                uri=data.checkpoint_uri,
                fine_tuned_model_checkpoint=checkpoint_model_id(self.model_id(job), data.step),
                created_at=at,
            )
        )
        # A search's trials keep their checkpoints in runs of their own, which Ray Train
        # prunes (newest K per trial); only a plain run's are the job's to retain.
        if data.trial_id is None and not job.search and job.spec:
            self._retain(job)

    def _retain(self, job: Job) -> None:
        """Applies checkpoint retention (`service.jobs.retention`) to the job's rows: the
        removed ones' rows go now, their weights once this transaction has committed (so
        no listing ever shows a checkpoint whose files are gone). A deployed checkpoint is
        kept whatever its age: someone is serving it."""
        spec = JobSpec.model_validate(job.spec, strict=False)
        keep = spec.training.num_checkpoints_to_keep
        rows = self.store.checkpoints_of(job.id)
        deployed = self.store.deployed(job.tenant_id, [r.fine_tuned_model_checkpoint for r in rows])
        decision = retention.plan(
            [retention.Scored.of(r.step_number, r.metrics) for r in rows],
            keep,
            protected=[r.step_number for r in rows if r.fine_tuned_model_checkpoint in deployed],
        )
        removed = set(decision.removed)
        if not removed:
            return
        why = retention.describe(decision, keep)
        # Never anything outside the job's own storage, whatever a row says.
        root = spec.output_uri.rstrip("/") + "/"
        released: list[tuple[str, dict[str, Any]]] = []
        for row in rows:
            if row.step_number not in removed:
                continue
            self.store.remove_checkpoint(row)
            event_id = removal_event_id(job.id, row.step_number)
            if not self.store.has_event(event_id):
                event = add_event(
                    self.session,
                    job.id,
                    job.tenant_id,
                    f"Checkpoint at step {row.step_number} removed: {why}",
                    data={
                        "kind": "checkpoint_removed",
                        "step": row.step_number,
                        "checkpoint": row.fine_tuned_model_checkpoint,
                        "kept_steps": sorted(decision.kept),
                    },
                )
                event.id = event_id
            if row.uri.startswith(root):
                released.append((row.uri, {"step": row.step_number, "reason": why}))
        self.session.flush()
        on_commit(self.session, lambda: retention.release_all(released))

    def trial(self, job: Job, data: TrialData, at: float) -> None:
        row = self.store.trial(job.id, data.trial_id)
        if row is None:
            row = Trial(
                id=f"fttrial-{job.id.removeprefix('ftjob-')}-{data.trial_id}",
                job_id=job.id,
                tenant_id=job.tenant_id,
                trial_id=data.trial_id,
                status=data.status,
                created_at=at,
                updated_at=at,
            )
        # Entries of one job arrive in order, but a redelivered old one must not win.
        if at >= row.updated_at:
            row.status = data.status
            row.params = dict(data.params or row.params or {})
            row.metrics = dict(data.metrics or row.metrics or {})
            if data.best_metric is not None:
                row.best_metric = data.best_metric
            row.iterations = data.iterations
            row.checkpoint_uri = data.checkpoint_uri or row.checkpoint_uri
            row.updated_at = at
        self.store.add(row)

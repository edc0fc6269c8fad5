"""Stored job rows as the API shows them: a job, its events, metrics, checkpoints and trials.

Only reshaping lives here (timestamps to ints, what a user should not see left out); the
rules of what may be read are in `service.jobs.service`.
"""

from __future__ import annotations

from typing import Any

from service.jobs.integrations import integrations_out
from service.jobs.schemas import (
    CheckpointOut,
    EventOut,
    JobError,
    JobOut,
    MetricPoint,
    TrialOut,
)
from service.models import Checkpoint, Job, JobEvent, Trial
from service.models.status import public_status
from service.schemas import shown


def _int_or_none(value: float | None) -> int | None:
    return int(value) if value is not None else None


def job_out(job: Job, estimated_finish: int | None = None) -> JobOut:
    """`estimated_finish`: when a running job should end (`service.jobs.eta`), which the
    service reads for it."""
    return JobOut(
        id=job.id,
        created_at=int(job.created_at),
        finished_at=_int_or_none(job.finished_at),
        started_at=_int_or_none(job.started_at),
        model=job.model,
        fine_tuned_model=job.fine_tuned_model,
        organization_id=job.tenant_id,
        status=public_status(job.status),
        state=job.status,
        hyperparameters=dict(job.hyperparameters or {}),
        training_file=job.training_file,
        validation_file=job.validation_file,
        result_files=list(job.result_files or []),
        trained_tokens=job.trained_tokens,
        error=JobError.model_validate(job.error) if job.error else None,
        seed=job.seed,
        suffix=job.suffix,
        user_provided_suffix=job.suffix,
        metadata=job.metadata_,
        method=job.method or {"type": "supervised"},
        estimated_finish=estimated_finish,
        task=job.task,
        adapter=job.adapter or {},
        resources=_resources_out(job.resources or {}),
        search=job.search,
        priority=job.priority,
        search_result=job.search_result,
        result=job.result,
        integrations=integrations_out(job.spec),
    )


def _resources_out(resources: dict[str, Any]) -> dict[str, Any]:
    """What the job holds, as a user reads it: no GPU fields on a CPU job."""
    if resources.get("use_gpu"):
        return resources
    return {k: v for k, v in resources.items() if k != "gpus_per_worker"}


def event_out(e: JobEvent) -> EventOut:
    # OpenAI's types are message | metrics (rows stored before held "status" for status
    # changes: messages too) and its `data` is an object, never null.
    kind = "metrics" if e.type == "metrics" else "message"
    return shown(EventOut, e, created_at=int(e.created_at), type=kind, data=e.data or {})


def metric_point(e: JobEvent) -> MetricPoint | None:
    """The numbers of a metrics event; None for one without a step."""
    data = e.data or {}
    step = data.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    numbers = {
        k: float(v)
        for k, v in data.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"
    }
    trial = data.get("trial_id")
    return MetricPoint(
        id=e.id,
        created_at=int(e.created_at),
        step=step,
        kind="eval" if data.get("kind") == "eval" else "train",
        trial_id=str(trial) if trial is not None else None,
        metrics=numbers,
    )


def checkpoint_out(c: Checkpoint) -> CheckpointOut:
    return shown(
        CheckpointOut,
        c,
        created_at=int(c.created_at),
        fine_tuning_job_id=c.job_id,
        metrics=c.metrics or {},
    )


def trial_out(t: Trial) -> TrialOut:
    return TrialOut(
        id=t.id,
        fine_tuning_job_id=t.job_id,
        trial_id=t.trial_id,
        status=t.status,
        params=t.params or {},
        metrics=t.metrics or {},
        best_metric=t.best_metric,
        iterations=t.iterations,
        checkpoint=t.checkpoint_uri,
        created_at=int(t.created_at),
        updated_at=int(t.updated_at),
    )

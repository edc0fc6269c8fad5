"""Checkpoints as models: a job's kept checkpoint ``<model id>:ckpt-step-<N>`` answers
inference, can be deployed and is shown by GET /v1/models/{id}, like a fine-tuned model.

A checkpoint has no row among the models; `as_model` describes it with the fields a
fine-tuned model has, taken from its job, so routing and the API treat both alike. Its
weights are the checkpoint's ``model/`` folder (the adapter or the whole model, with the
manifest the worker writes beside them).

Retention (`service.jobs.retention`) deletes a removed checkpoint's row and records a job
event under `removal_event_id`, which is how a lookup tells "removed by retention" from
"never existed".
"""

from __future__ import annotations

from service.models import Checkpoint, FineTunedModel, Job

CHECKPOINT_MARK = ":ckpt-step-"
# The folder of a checkpoint that holds its weights (workers.checkpoints.MODEL_DIR).
MODEL_DIR = "model"


def checkpoint_model_id(model_id: str, step: int) -> str:
    """The id of the checkpoint at `step` of the job whose model id is `model_id`."""
    return f"{model_id}{CHECKPOINT_MARK}{step}"


def parse_checkpoint_model_id(model_id: str) -> tuple[str, int] | None:
    """(job id, step) of a checkpoint's model id; None for any other id."""
    prefix, mark, step = model_id.rpartition(CHECKPOINT_MARK)
    if not mark or not step.isdigit() or ":" not in prefix:
        return None
    return prefix.rsplit(":", 1)[1], int(step)


def removal_event_id(job_id: str, step: int) -> str:
    """The id of the job event that says the checkpoint at `step` was removed."""
    return f"ftevent-{job_id.removeprefix('ftjob-')}-ckpt-removed-{step}"


def as_model(checkpoint: Checkpoint, job: Job) -> FineTunedModel:
    """The checkpoint described as a fine-tuned model of its job (never stored)."""
    return FineTunedModel.of_job(
        job,
        id=checkpoint.fine_tuned_model_checkpoint,
        artifact_uri=f"{checkpoint.uri.rstrip('/')}/{MODEL_DIR}",
        created_at=checkpoint.created_at,
    )

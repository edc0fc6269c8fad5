"""Fine-tuning job shapes: OpenAI's fields plus Tuneplane's extensions (DESIGN §3)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import ApiObject, CompleteList, CursorPage, IdRangePage
from workers.spec import Adapter, SearchSpec, Task

Auto = Literal["auto"]


class HyperparametersIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # OpenAI's three.
    # The bounds sit on the number alone: on the union they would be applied to "auto" too
    # (a TypeError inside pydantic, which was a 500).
    n_epochs: Annotated[int, Field(ge=1, le=1000)] | Auto | None = None
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Auto | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto | None = None
    # Tuneplane's: any TrainingConfig field.
    learning_rate: float | None = Field(None, gt=0, le=1)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant"] | None = None
    gradient_accumulation_steps: int | None = Field(None, ge=1, le=1024)
    max_grad_norm: float | None = Field(None, gt=0, le=1e6)
    weight_decay: float | None = Field(None, ge=0, le=10)
    max_length: int | None = Field(None, ge=8, le=131072)
    eval_every_steps: int | None = Field(None, ge=1, le=10_000_000)
    eval_at_start: bool | None = None
    checkpoint_every_steps: int | None = Field(None, ge=1, le=10_000_000)
    num_checkpoints_to_keep: int | None = Field(None, ge=1, le=100)
    max_failures: int | None = Field(None, ge=0, le=100)


class ResourcesIn(BaseModel):
    """`Resources` as a request gives them: cpus_per_worker may be left to the scheduler."""

    model_config = ConfigDict(extra="forbid", strict=True)

    num_workers: int = Field(1, ge=1, le=256)
    use_gpu: bool = False
    # None or "auto": the CPUs free when the job starts, split over its workers.
    cpus_per_worker: Annotated[float, Field(gt=0, le=256)] | Auto | None = None
    gpus_per_worker: float = Field(1.0, gt=0, le=16)


class SupervisedIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    hyperparameters: HyperparametersIn | None = None


class MethodIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedIn | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    # Part of the model id ft:<base>:<tenant>:<suffix>:<job>, so no ':'.
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    method: MethodIn | None = None
    hyperparameters: HyperparametersIn | None = None
    integrations: list[dict[str, Any]] | None = Field(None, max_length=16)
    # Tuneplane extensions.
    adapter: Adapter | None = None
    task: Task | None = None
    search: SearchSpec | None = None
    resources: ResourcesIn | None = None
    priority: int = Field(0, ge=-100, le=100)


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobOut(ApiObject):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: str
    hyperparameters: dict[str, Any]
    training_file: str
    validation_file: str | None
    result_files: list[str]
    trained_tokens: int | None
    error: JobError | None
    seed: int
    suffix: str | None = None
    user_provided_suffix: str | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any]
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    # Tuneplane extensions.
    task: str
    adapter: dict[str, Any]
    resources: dict[str, Any]
    search: dict[str, Any] | None = None
    priority: int
    started_at: int | None = None
    # For a search: {"trial_id", "metric", "value", "params"} of the winning trial.
    search_result: dict[str, Any] | None = None
    # A succeeded job's final metrics: {"metrics": {"train_loss", "eval_loss",
    # "eval_accuracy" (classification), "step", ...}}.
    result: dict[str, Any] | None = None


class JobList(CursorPage[JobOut]): ...


class EventOut(ApiObject):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None


class EventList(CursorPage[EventOut]): ...


class MetricPoint(ApiObject):
    """One training or validation report (a Tuneplane extension, for loss curves)."""

    object: Literal["fine_tuning.job.metric"] = "fine_tuning.job.metric"
    created_at: int
    step: int
    # "train": a training step (train_loss, learning_rate, ...); "eval": a validation pass.
    kind: Literal["train", "eval"]
    # For a search: the trial that reported it.
    trial_id: str | None = None
    metrics: dict[str, float]


class MetricList(CursorPage[MetricPoint]): ...


class CheckpointOut(ApiObject):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class CheckpointList(IdRangePage[CheckpointOut]): ...


class TrialOut(ApiObject):
    object: Literal["fine_tuning.job.trial"] = "fine_tuning.job.trial"
    fine_tuning_job_id: str
    trial_id: str
    # running | terminated | early_stopped | error
    status: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    best_metric: float | None
    iterations: int
    checkpoint: str | None
    created_at: int
    updated_at: int


class TrialList(CompleteList[TrialOut]): ...

"""Fine-tuning job shapes: OpenAI's fields plus Tuneplane's extensions (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.errors import BadRequest
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


class DpoHyperparametersIn(HyperparametersIn):
    # OpenAI's range: above 0, at most 2; "auto" is DPO's usual 0.1.
    beta: Annotated[float, Field(gt=0, le=2)] | Auto | None = None


class DpoIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    hyperparameters: DpoHyperparametersIn | None = None


class MethodIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedIn | None = None
    dpo: DpoIn | None = None
    reinforcement: dict[str, Any] | None = None


# OpenAI's `Metadata` limits.
METADATA_PAIRS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512


def _key_shown(key: str) -> str:
    return key if len(key) <= 20 else key[:20] + "..."


def _metadata_limits(value: dict[str, str]) -> dict[str, str]:
    # Checked here rather than as Field constraints: pydantic's own messages for those
    # ("Dictionary should have at most 16 items after validation, not more", a key's error
    # located at "metadata.<key>.[key]") did not say what the limit is about.
    if len(value) > METADATA_PAIRS:
        raise ValueError(f"at most {METADATA_PAIRS} key-value pairs, not {len(value)}")
    for key in value:
        if len(key) > METADATA_KEY_CHARS:
            raise ValueError(
                f"key '{_key_shown(key)}' is {len(key)} characters long; keys are at most "
                f"{METADATA_KEY_CHARS}"
            )
    return value


# A value too long is refused at its own param, "metadata.<key>".
Metadata = Annotated[
    dict[str, Annotated[str, Field(max_length=METADATA_VALUE_CHARS)]],
    AfterValidator(_metadata_limits),
]


@dataclass(frozen=True)
class MetadataFilter:
    """`GET /v1/fine_tuning/jobs?metadata[k]=v&...` (every pair must match), or
    `?metadata=null` (`no_metadata`: the jobs created without metadata)."""

    pairs: dict[str, str] = field(default_factory=dict)
    no_metadata: bool = False


# How OpenAI documents the filter (a deepObject parameter, which FastAPI cannot declare).
METADATA_FILTER_PARAM: dict[str, Any] = {
    "in": "query",
    "name": "metadata",
    "required": False,
    "style": "deepObject",
    "explode": True,
    "schema": {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE_CHARS},
        "propertyNames": {"maxLength": METADATA_KEY_CHARS},
        "maxProperties": METADATA_PAIRS,
    },
    "description": "Jobs whose metadata has every pair given as `metadata[k]=v`; "
    "`metadata=null` lists the jobs without metadata.",
}


def metadata_filter(query: Iterable[tuple[str, str]]) -> MetadataFilter:
    """The metadata filter in a query string, as OpenAI's clients send it."""
    pairs: dict[str, str] = {}
    no_metadata = False
    for name, value in query:
        if name == "metadata":
            if value != "null":
                raise BadRequest(
                    "Filter on metadata with metadata[key]=value (every pair must match), "
                    "or list the jobs without metadata with metadata=null.",
                    param="metadata",
                )
            no_metadata = True
            continue
        if not name.startswith("metadata["):
            continue
        if not name.endswith("]"):
            raise BadRequest(f"'{name}': a metadata filter is metadata[key]=value.", param=name)
        key = name[len("metadata[") : -1]
        if key in pairs:
            raise BadRequest(f"'{name}' is given twice.", param=name)
        if len(key) > METADATA_KEY_CHARS:
            raise BadRequest(
                f"Metadata keys are at most {METADATA_KEY_CHARS} characters.", param=name
            )
        if len(value) > METADATA_VALUE_CHARS:
            raise BadRequest(
                f"Metadata values are at most {METADATA_VALUE_CHARS} characters.", param=name
            )
        pairs[key] = value
    if len(pairs) > METADATA_PAIRS:
        raise BadRequest(
            f"At most {METADATA_PAIRS} metadata pairs, not {len(pairs)}.", param="metadata"
        )
    if no_metadata and pairs:
        raise BadRequest(
            "metadata=null (jobs without metadata) and metadata[key]=value filters exclude "
            "each other; give one of them.",
            param="metadata",
        )
    return MetadataFilter(pairs, no_metadata)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    # Part of the model id ft:<base>:<tenant>:<suffix>:<job>, so no ':'.
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: Metadata | None = None
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
    # OpenAI's statuses, and its pause operation's.
    status: str
    # A Tuneplane extension: the full state, which also names a change under way
    # (a cancel or a pause) that `status` shows as the state being left.
    state: str
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

"""The one contract between the control plane and the workers.

The control plane validates a user's request, resolves every default and "auto", and
stores a `JobSpec`; the worker entrypoint receives exactly that object. Nothing in here
imports from `service/`.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Task = Literal["causal_lm", "sequence_classification"]

# What a run reports in its ``status`` events, in the order it goes through them.
RunStatus = Literal["preparing", "training", "saving", "succeeded", "failed", "paused"]
# A search trial's state in its ``trial`` events.
TrialState = Literal["running", "terminated", "early_stopped", "error"]
# The statuses by name: the rest of workers/ spells none of them (the control plane's own
# job statuses use some of the same words, and a grep for one should find its owners).
RUN_PREPARING: Final[RunStatus] = "preparing"
RUN_TRAINING: Final[RunStatus] = "training"
RUN_SAVING: Final[RunStatus] = "saving"
RUN_SUCCEEDED: Final[RunStatus] = "succeeded"
RUN_FAILED: Final[RunStatus] = "failed"
# Stopped on request with a checkpoint of where it was; a new run resumes from it.
RUN_PAUSED: Final[RunStatus] = "paused"
TRIAL_RUNNING: Final[TrialState] = "running"
TRIAL_TERMINATED: Final[TrialState] = "terminated"
TRIAL_EARLY_STOPPED: Final[TrialState] = "early_stopped"
TRIAL_ERROR: Final[TrialState] = "error"
DataFormat = Literal["chat", "prompt_completion", "text", "classification", "preference"]
# How a job learns: from examples (OpenAI's "supervised") or from pairs of a preferred and
# a non-preferred answer (Direct Preference Optimization).
Method = Literal["supervised", "dpo"]

# Which file formats each task can train on.
TASK_FORMATS: dict[str, frozenset[str]] = {
    "causal_lm": frozenset({"chat", "prompt_completion", "text", "preference"}),
    "sequence_classification": frozenset({"classification"}),
}
# Which file formats each method trains on (a job's file must be in both sets).
METHOD_FORMATS: dict[str, frozenset[str]] = {
    "supervised": frozenset({"chat", "prompt_completion", "text", "classification"}),
    "dpo": frozenset({"preference"}),
}


class _Strict(BaseModel):
    # Unknown fields and wrong JSON types (`true` for a count, "3" for a number) are errors.
    model_config = ConfigDict(extra="forbid", strict=True)


class LoraAdapter(_Strict):
    # "qlora" is LoRA over a frozen base held in 4-bit (NF4, double quantization): the same
    # adapter, trained in less memory, saved and served as a LoRA adapter on the full base.
    # One class for both, so every "is it an adapter job" check covers QLoRA too.
    type: Literal["lora", "qlora"] = "lora"
    r: int = Field(8, ge=1, le=512)
    alpha: int = Field(16, ge=1, le=4096)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # Module names, or "all-linear" (every linear layer but the output head, as peft
    # means it); None: defaulted per architecture by the worker.
    target_modules: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=128)]],
            Field(min_length=1, max_length=64),
        ]
        | Literal["all-linear"]
        | None
    ) = None


class FullAdapter(_Strict):
    type: Literal["full"] = "full"


Adapter = Annotated[LoraAdapter | FullAdapter, Field(discriminator="type")]


class Resources(_Strict):
    num_workers: int = Field(1, ge=1, le=256)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, le=256)
    gpus_per_worker: float = Field(1.0, gt=0, le=16)

    @property
    def total_cpus(self) -> float:
        return self.num_workers * self.cpus_per_worker

    @property
    def total_gpus(self) -> float:
        return self.num_workers * self.gpus_per_worker if self.use_gpu else 0.0


class TrainingConfig(_Strict):
    """Resolved hyperparameters: every value concrete, nothing "auto"."""

    n_epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=4096)
    learning_rate: float = Field(2e-4, gt=0, le=1)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_grad_norm: float = Field(1.0, gt=0, le=1e6)
    weight_decay: float = Field(0.0, ge=0, le=10)
    max_length: int = Field(512, ge=8, le=131072)
    # Evaluate the base model before the first step too (costs a pass over the
    # validation data; gives the score the fine-tuned model is compared with).
    eval_at_start: bool = False
    # None: evaluate once per epoch (when there is validation data).
    eval_every_steps: int | None = Field(None, ge=1, le=10_000_000)
    # None: checkpoint once per epoch.
    checkpoint_every_steps: int | None = Field(None, ge=1, le=10_000_000)
    # Retention: the last this many checkpoints and the best one (lowest validation loss,
    # else training loss) are kept; older ones are removed from storage as the run goes.
    num_checkpoints_to_keep: int = Field(2, ge=1, le=100)
    max_failures: int = Field(2, ge=0, le=100)


# Hyperparameters a search may vary; each maps onto TrainingConfig or LoraAdapter.
SEARCHABLE_PARAMS: frozenset[str] = frozenset(
    {
        "learning_rate",
        "batch_size",
        "n_epochs",
        "warmup_ratio",
        "weight_decay",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        # DPO's beta (DpoConfig), for method "dpo" only.
        "beta",
    }
)


class Choice(_Strict):
    type: Literal["choice"]
    values: list[float | int | str] = Field(min_length=1, max_length=1000)


class Grid(_Strict):
    type: Literal["grid"]
    values: list[float | int | str] = Field(min_length=1, max_length=1000)


class Uniform(_Strict):
    type: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        return self


class LogUniform(_Strict):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LogUniform:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        return self


Distribution = Annotated[Choice | Grid | Uniform | LogUniform, Field(discriminator="type")]


class SearchSpec(_Strict):
    space: dict[str, Distribution] = Field(min_length=1, max_length=16)
    num_trials: int = Field(4, ge=1, le=256)
    algorithm: Literal["random", "grid", "optuna"] = "random"
    scheduler: Literal["asha", "fifo"] = "asha"
    # eval_reward_accuracy: DPO's share of validation pairs the model prefers rightly.
    metric: Literal["eval_loss", "train_loss", "eval_accuracy", "eval_reward_accuracy"] = (
        "eval_loss"
    )
    mode: Literal["min", "max"] = "min"
    # None: the control plane fills it from free capacity and the tenant's quota.
    max_concurrent_trials: int | None = Field(None, ge=1, le=256)


class DpoConfig(_Strict):
    """Direct Preference Optimization: the loss is -log sigmoid(beta * (chosen log-ratio -
    rejected log-ratio)), each log-ratio taken against the reference model (the model the
    job starts from)."""

    # OpenAI's range: (0, 2].
    beta: float = Field(0.1, gt=0, le=2)


class InitFrom(_Strict):
    """The fine-tuned model (or checkpoint) a job continues from."""

    # Its id: ft:... or ft:...:ckpt-step-N.
    model: str
    # Its weights folder (artifact-store URI): the LoRA adapter, or the whole model.
    uri: str
    adapter: Literal["lora", "full"]


class BaseModelRef(_Strict):
    """A catalog entry resolved for the worker."""

    name: str
    # A local directory, a hub id, or "tiny:<name>" (built offline by workers.tiny).
    source: str
    architecture: str | None = None


# Experiment trackers a job logs to (its hyperparameters, per-step metrics and the model it
# made). OpenAI's shape: {"type": "wandb", "wandb": {...}}; "mlflow" is Tuneplane's.
TrackerName = Annotated[str, Field(min_length=1, max_length=128)]


class WandbSettings(_Strict):
    project: TrackerName
    # The run's display name; None: the job's id (the run's id is the job's id either way).
    name: TrackerName | None = None
    entity: TrackerName | None = None
    # W&B's own limit: 64 characters a tag.
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=50
    )


class MlflowSettings(_Strict):
    # An http(s) URL of an MLflow tracking server (the control plane refuses other schemes:
    # a file or database URI would have workers write on their own machine).
    tracking_uri: Annotated[str, Field(min_length=1, max_length=2048)]
    experiment: TrackerName = "tuneplane"
    # The run's name; None: the job's id.
    name: TrackerName | None = None


class WandbIntegration(_Strict):
    type: Literal["wandb"]
    wandb: WandbSettings


class MlflowIntegration(_Strict):
    type: Literal["mlflow"]
    mlflow: MlflowSettings


Integration = Annotated[WandbIntegration | MlflowIntegration, Field(discriminator="type")]


class JobSpec(_Strict):
    job_id: str
    tenant_id: str
    base_model: BaseModelRef
    task: Task = "causal_lm"
    data_format: DataFormat
    # Artifact-store URIs (fsspec) of the validated JSONL files.
    training_file_uri: str
    validation_file_uri: str | None = None
    # Where the worker writes checkpoints and the final artifact.
    output_uri: str
    seed: int = Field(ge=0, le=2**31 - 1)
    adapter: Adapter = Field(default_factory=LoraAdapter)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    resources: Resources = Field(default_factory=Resources)
    search: SearchSpec | None = None
    # For classification: label values in the order of the model's output ids.
    labels: list[str] | None = None
    method: Method = "supervised"
    # Set when method is "dpo".
    dpo: DpoConfig | None = None
    # Continued training: the job starts from this fine-tuned model's weights. A LoRA
    # parent's adapter goes on training as the same adapter on `base_model`; a full
    # parent's folder is `base_model.source` itself.
    init_from: InitFrom | None = None
    # Trackers the run logs to (`workers.trackers`); their credentials are never in the spec
    # but in the tenant's secrets, handed to the worker beside it (`TRACKER_SECRETS_FILE`).
    integrations: list[Integration] = Field(default_factory=list, max_length=16)
    # The id the job's model gets when it succeeds (ft:base:tenant:suffix:job), for trackers.
    fine_tuned_model: str | None = None

    @model_validator(mode="after")
    def _method_config(self) -> JobSpec:
        if (self.method == "dpo") != (self.dpo is not None):
            raise ValueError("dpo settings go with method 'dpo', and only with it")
        return self


# ---------------------------------------------------------------- serving

# The multiplexed model id that means "no adapter": a base or fully fine-tuned model itself.
BASE_MODEL_ID = "__base__"
# Response header with the seconds an adapter took to load, on the request that loaded it.
ADAPTER_LOAD_HEADER = "x-tuneplane-adapter-load-s"
# How many requests were decoded together with this one (observability, benchmarks).
BATCH_SIZE_HEADER = "x-tuneplane-batch-size"
SERVE_IMPORT_PATH = "workers.serve:build_app"
# Beside a published model: job, base model, task, labels, max_length, final metrics.
MANIFEST_FILE = "tuneplane.json"


class ServeArgs(_Strict):
    """The `args` of a Serve application (`workers.serve.build_app`)."""

    source: str  # base model: `tiny:<name>`, hub id, local path or URI of a full model
    task: Task = "causal_lm"
    num_labels: int | None = Field(None, ge=2)
    models_dir: str
    max_adapters: int = Field(16, ge=1)
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    max_context_tokens: int = Field(1024, ge=8)
    # Which engine generates: vLLM where a GPU, vLLM and the architecture allow it ("auto"),
    # or one named; classifiers always run on transformers.
    engine: Literal["auto", "vllm", "hf"] = "auto"
    max_lora_rank: int = Field(64, ge=1)  # the largest adapter rank vLLM makes room for

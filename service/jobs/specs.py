"""The one conversion from a fine-tuning request (`JobCreate`) to what a worker runs (`JobSpec`).

`SpecBuilder.build` checks the request against the catalog, the tenant's files, the
service's limits and the search rules, fills in the automatic hyperparameters, and returns
a `JobDraft`: the spec plus what the stored row needs beside it. `JobDraft.row` derives
every row column that repeats the spec (hyperparameters, method, adapter, resources,
search) from the spec itself, so the row and the spec cannot disagree.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError

from service.common import new_id
from service.config import Settings
from service.errors import BadRequest
from service.files.repository import FileRepository
from service.jobs.auto import auto_batch_size, auto_epochs, auto_learning_rate
from service.jobs.integrations import check_integration
from service.jobs.methods import MethodChoice, check_file_format, check_method_task, method_of
from service.jobs.parents import Start, continued_adapter, resolve_start
from service.jobs.queueing import AUTO_CPUS
from service.jobs.schemas import HyperparametersIn, JobCreate, ResourcesIn
from service.models import Job, StoredFile, Tenant
from service.models.status import JobStatus
from service.registry.catalog import Catalog, CatalogEntry
from service.registry.repository import ModelRepository
from service.registry.service import fine_tuned_model_id
from service.storage import ArtifactStore
from workers.spec import (
    SEARCHABLE_PARAMS,
    Adapter,
    DataFormat,
    DpoConfig,
    JobSpec,
    LoraAdapter,
    Resources,
    SearchSpec,
    Task,
    TrainingConfig,
)

# Search params that set LoRA fields rather than TrainingConfig fields.
LORA_PARAMS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}
INT_PARAMS = {"batch_size", "n_epochs", "lora_r", "lora_alpha"}
# For a base model whose catalog entry names no rate for the adapter type.
DEFAULT_BASE_LR = 2e-4


def _base_lr(entry: CatalogEntry, adapter_type: str) -> float:
    # QLoRA trains the same adapter as LoRA (only the frozen base is 4-bit), at LoRA's rate.
    rate_of = "lora" if adapter_type == "qlora" else adapter_type
    return entry.learning_rate.get(rate_of, DEFAULT_BASE_LR)


def _param_of(exc: ValidationError, prefix: str) -> str:
    """The request field a validation error is about (the adapter's union tag left out)."""
    loc = exc.errors()[0].get("loc", ())
    parts = [str(p) for p in loc if p not in ("lora", "qlora", "full")]
    return ".".join([prefix, *parts]) if parts else prefix


@dataclass(frozen=True)
class JobDraft:
    """A request resolved and validated: the spec and what the stored row needs beside it."""

    spec: JobSpec
    body: JobCreate
    # The model the user asked for: a catalog name, or the fine-tuned model or checkpoint
    # the job continues (the spec holds the resolved reference).
    model: str
    method: MethodChoice
    training_file: StoredFile
    validation_file: StoredFile | None
    # Relative to the base model's rate; None when the user set an absolute rate.
    learning_rate_multiplier: float | None
    # cpus_per_worker was left to the scheduler (see queueing.AUTO_CPUS).
    auto_cpus: bool

    def hyperparameters(self) -> dict[str, Any]:
        """The training settings as the API reports them: OpenAI's first, then the rest."""
        training = self.spec.training
        resolved: dict[str, Any] = {
            "n_epochs": training.n_epochs,
            "batch_size": training.batch_size,
            **training.model_dump(exclude={"n_epochs", "batch_size"}),
        }
        if self.learning_rate_multiplier is not None:
            resolved["learning_rate_multiplier"] = self.learning_rate_multiplier
        return resolved

    def row(self, status: JobStatus, created_at: float) -> Job:
        spec, body = self.spec, self.body
        hyperparameters = self.hyperparameters()
        return Job(
            id=spec.job_id,
            tenant_id=spec.tenant_id,
            status=status,
            model=self.model,
            task=spec.task,
            training_file=self.training_file.id,
            validation_file=self.validation_file.id if self.validation_file else None,
            suffix=body.suffix,
            seed=spec.seed,
            priority=body.priority,
            hyperparameters=hyperparameters,
            method={
                "type": spec.method,
                spec.method: {"hyperparameters": {**hyperparameters, **self.method.config()}},
            },
            metadata_=body.metadata,
            adapter=spec.adapter.model_dump(),
            resources={**spec.resources.model_dump(), AUTO_CPUS: self.auto_cpus},
            search=spec.search.model_dump() if spec.search else None,
            spec=spec.model_dump(mode="json"),
            result_files=[],
            created_at=created_at,
            updated_at=created_at,
        )


@dataclass(frozen=True)
class SpecBuilder:
    """Turns a tenant's `JobCreate` into a `JobDraft`, or a `BadRequest` naming the field."""

    tenant: Tenant
    catalog: Catalog
    files: FileRepository
    settings: Settings
    store: ArtifactStore
    models: ModelRepository

    def build(self, body: JobCreate, *, max_gpus: int | None) -> JobDraft:
        # The checks run in this order so that a request with several faults always gets
        # the same error first.
        start = resolve_start(body.model, self.catalog, self.models)
        entry = start.entry if start is not None else self._entry(body.model)
        task = self._task(body, entry, start)
        method = method_of(body)
        check_method_task(method, entry, task)
        training, validation = self._data_files(body, entry, task, method, start)
        adapter = (
            continued_adapter(start, body.adapter)
            if start is not None
            else body.adapter or LoraAdapter()
        )
        hp = method.hyperparameters
        config = self._training_config(hp, entry, adapter.type, training)
        resources = self._resources(body.resources or ResourcesIn())
        self._check_resources(resources, max_gpus)
        if body.search is not None:
            self._check_search(body.search, adapter, config, task, validation, method)
        integrations = [
            check_integration(raw, f"integrations[{i}]")
            for i, raw in enumerate(body.integrations or [])
        ]
        spec = self._spec(
            body, entry, task, training, validation, adapter, config, resources, method, start
        )
        if integrations:
            spec = spec.model_copy(
                update={
                    "integrations": integrations,
                    "fine_tuned_model": fine_tuned_model_id(
                        spec.base_model.name, self.tenant.name, body.suffix, spec.job_id
                    ),
                }
            )
        given_cpus = body.resources.cpus_per_worker if body.resources else None
        return JobDraft(
            spec=spec,
            body=body,
            model=body.model if start is not None else entry.name,
            method=method,
            training_file=training,
            validation_file=validation,
            # The rate relative to the base model's; meaningless beside an absolute rate.
            learning_rate_multiplier=None
            if hp.learning_rate is not None
            else round(config.learning_rate / _base_lr(entry, adapter.type), 6),
            # A search's trials share the cluster by their number instead (trial_slots).
            auto_cpus=body.search is None and not isinstance(given_cpus, float | int),
        )

    def _spec(
        self,
        body: JobCreate,
        entry: CatalogEntry,
        task: Task,
        training: StoredFile,
        validation: StoredFile | None,
        adapter: Adapter,
        config: TrainingConfig,
        resources: Resources,
        method: MethodChoice,
        start: Start | None,
    ) -> JobSpec:
        job_id = new_id("ftjob")
        # A continued classifier keeps its parent's labels: its head is sized to them.
        labels = start.labels if start is not None and start.labels else training.labels
        try:
            return JobSpec(
                job_id=job_id,
                tenant_id=self.tenant.id,
                base_model=entry.ref(),
                task=task,
                data_format=cast(DataFormat, training.format),
                training_file_uri=self.store.uri_for(training.storage_key),
                validation_file_uri=self.store.uri_for(validation.storage_key)
                if validation
                else None,
                output_uri=self.store.uri_for(f"{self.tenant.id}/jobs/{job_id}"),
                seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
                adapter=adapter,
                training=config,
                resources=resources,
                search=body.search,
                labels=labels if task == "sequence_classification" else None,
                method=method.type,
                dpo=method.dpo,
                init_from=start.init_from if start is not None else None,
            )
        except ValidationError as exc:
            raise BadRequest(str(exc.errors()[0]["msg"]), param=_param_of(exc, "spec")) from None

    # -- model, task and files -----------------------------------------------------------

    def _entry(self, name: str) -> CatalogEntry:
        entry = self.catalog.get(name)
        if entry is None:
            raise BadRequest(
                f"Model '{name}' is not available for fine-tuning. Available base models: "
                f"{', '.join(self.catalog.names())}.",
                param="model",
                code="model_not_available",
            )
        return entry

    def _task(self, body: JobCreate, entry: CatalogEntry, start: Start | None) -> Task:
        task = body.task or entry.tasks[0]
        if start is not None and start.task is not None and task != start.task:
            raise BadRequest(
                f"'{body.model}' is a {start.task} model; a job continuing it keeps its task.",
                param="task",
            )
        if task not in entry.tasks:
            raise BadRequest(
                f"Model '{entry.name}' does not support task '{task}'; it supports "
                f"{', '.join(entry.tasks)}.",
                param="task",
            )
        return task

    def _data_files(
        self,
        body: JobCreate,
        entry: CatalogEntry,
        task: Task,
        method: MethodChoice,
        start: Start | None,
    ) -> tuple[StoredFile, StoredFile | None]:
        training = self._file(body.training_file, "training_file", task, method)
        if start is not None and start.labels and task == "sequence_classification":
            unknown = set(training.labels or []) - set(start.labels)
            if unknown:
                raise BadRequest(
                    f"training_file has labels the model '{body.model}' was not trained on: "
                    f"{sorted(unknown)[:5]}; a continued classifier keeps its labels "
                    f"({', '.join(start.labels)}).",
                    param="training_file",
                )
        if training.format in ("chat", "preference") and not entry.chat:
            raise BadRequest(
                f"Model '{entry.name}' has no chat template, so it cannot train on chat data; "
                "use prompt/completion or text data.",
                param="training_file",
                code="invalid_file_format",
            )
        if not body.validation_file:
            return training, None
        validation = self._file(body.validation_file, "validation_file", task, method)
        if task == "sequence_classification":
            known = start.labels if start is not None and start.labels else training.labels
            unknown = set(validation.labels or []) - set(known or [])
            if unknown:
                raise BadRequest(
                    f"validation_file has labels the training file lacks: {sorted(unknown)[:5]}",
                    param="validation_file",
                )
        return training, validation

    def _file(self, file_id: str, param: str, task: Task, method: MethodChoice) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise BadRequest(f"File '{file_id}' not found.", param=param, code="file_not_found")
        if stored.purpose != "fine-tune":
            raise BadRequest(
                f"File '{file_id}' has purpose '{stored.purpose}', not 'fine-tune'.", param=param
            )
        check_file_format(stored, param, task, method.type)
        return stored

    # -- hyperparameters and resources ---------------------------------------------------

    def _training_config(
        self, hp: HyperparametersIn, entry: CatalogEntry, adapter_type: str, training: StoredFile
    ) -> TrainingConfig:
        multiplier = hp.learning_rate_multiplier
        if hp.learning_rate is not None and isinstance(multiplier, float | int):
            raise BadRequest(
                "Set learning_rate or learning_rate_multiplier, not both.",
                param="hyperparameters.learning_rate",
            )
        base_lr = _base_lr(entry, adapter_type)
        if isinstance(hp.batch_size, int):
            batch = hp.batch_size
            auto_lr = base_lr
        else:
            # The auto learning rate goes with the auto batch size; a batch the user chose
            # keeps the base model's rate.
            batch = min(auto_batch_size(training.examples), training.examples)
            auto_lr = auto_learning_rate(base_lr, batch)
        if hp.learning_rate is not None:
            lr = hp.learning_rate
        elif isinstance(multiplier, float | int):
            lr = base_lr * float(multiplier)
        else:
            lr = auto_lr
        extra = hp.model_dump(
            exclude_none=True,
            exclude={
                "n_epochs",
                "batch_size",
                "learning_rate_multiplier",
                "learning_rate",
                "beta",
            },
        )
        try:
            return TrainingConfig(
                n_epochs=(
                    hp.n_epochs if isinstance(hp.n_epochs, int) else auto_epochs(training.examples)
                ),
                batch_size=batch,
                learning_rate=lr,
                max_length=extra.pop("max_length", entry.max_length),
                **extra,
            )
        except ValidationError as exc:
            raise BadRequest(
                str(exc.errors()[0]["msg"]), param=_param_of(exc, "hyperparameters")
            ) from None

    @staticmethod
    def _resources(requested: ResourcesIn) -> Resources:
        given = requested.cpus_per_worker
        return Resources.model_validate(
            {
                **requested.model_dump(exclude={"cpus_per_worker"}),
                # The least a worker needs; the scheduler gives it what is free at start.
                "cpus_per_worker": float(given) if isinstance(given, float | int) else 1.0,
            }
        )

    def _check_resources(self, resources: Resources, max_gpus: int | None) -> None:
        num_workers, gpus = resources.num_workers, resources.total_gpus
        if num_workers > self.settings.max_workers_per_job:
            raise BadRequest(
                f"resources.num_workers is {num_workers}; this service allows at most "
                f"{self.settings.max_workers_per_job} workers per job.",
                param="resources.num_workers",
            )
        if max_gpus is not None and gpus > max_gpus:
            raise BadRequest(
                f"The job asks for {gpus:g} GPUs but tenant '{self.tenant.name}' may hold at "
                f"most {max_gpus}; it could never start.",
                param="resources",
            )

    # -- search --------------------------------------------------------------------------

    def _check_search(
        self,
        search: SearchSpec,
        adapter: Adapter,
        config: TrainingConfig,
        task: Task,
        validation: StoredFile | None,
        method: MethodChoice,
    ) -> None:
        for name, dist in search.space.items():
            param = f"search.space.{name}"
            if name not in SEARCHABLE_PARAMS:
                raise BadRequest(
                    f"'{name}' cannot be searched; searchable: "
                    + ", ".join(sorted(SEARCHABLE_PARAMS)),
                    param=param,
                )
            if name in LORA_PARAMS and not isinstance(adapter, LoraAdapter):
                raise BadRequest(f"'{name}' needs a LoRA adapter.", param=param)
            if name == "beta" and method.dpo is None:
                raise BadRequest("'beta' is DPO's; it needs method.type 'dpo'.", param=param)
            if search.algorithm == "grid" and dist.type != "grid":
                raise BadRequest("A grid search needs every dimension of type 'grid'.", param=param)
            if search.algorithm != "grid" and dist.type == "grid":
                raise BadRequest(
                    f"'grid' dimensions need algorithm 'grid', not '{search.algorithm}'.",
                    param=param,
                )
            candidates = (
                list(dist.values) if dist.type in ("choice", "grid") else [dist.low, dist.high]  # type: ignore[union-attr]
            )
            for value in candidates:
                self._check_candidate(name, value, adapter, config, param)
        self._check_search_metric(search, task, validation, method)

    @staticmethod
    def _check_search_metric(
        search: SearchSpec, task: Task, validation: StoredFile | None, method: MethodChoice
    ) -> None:
        if search.metric.startswith("eval_") and validation is None:
            raise BadRequest(
                f"search.metric '{search.metric}' needs a validation_file.", param="search.metric"
            )
        if search.metric == "eval_accuracy" and task != "sequence_classification":
            raise BadRequest(
                "eval_accuracy is only reported for sequence_classification.",
                param="search.metric",
            )
        if search.metric == "eval_reward_accuracy" and method.dpo is None:
            raise BadRequest(
                "eval_reward_accuracy is only reported for method 'dpo'.", param="search.metric"
            )
        maximised = ("eval_accuracy", "eval_reward_accuracy")
        expected_mode = "max" if search.metric in maximised else "min"
        if search.mode != expected_mode:
            raise BadRequest(
                f"search.mode must be '{expected_mode}' for metric '{search.metric}'.",
                param="search.mode",
            )

    @staticmethod
    def _check_candidate(
        name: str, value: float | int | str, adapter: Adapter, config: TrainingConfig, param: str
    ) -> None:
        if isinstance(value, str) or (name in INT_PARAMS and not float(value).is_integer()):
            raise BadRequest(
                f"{name} values must be {'integers' if name in INT_PARAMS else 'numbers'}.",
                param=param,
            )
        try:
            if name == "beta":
                DpoConfig.model_validate({"beta": value})
            elif name in LORA_PARAMS:
                LoraAdapter.model_validate({**adapter.model_dump(), LORA_PARAMS[name]: value})
            else:
                TrainingConfig.model_validate({**config.model_dump(), name: value})
        except ValidationError as exc:
            raise BadRequest(f"{value!r}: {exc.errors()[0]['msg']}", param=param) from None

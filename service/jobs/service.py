"""Fine-tuning job rules: validate a request into a JobSpec, store it, cancel it."""

from __future__ import annotations

import secrets
from typing import Any, cast

from pydantic import ValidationError
from sqlmodel import Session

from service.common import new_id, now
from service.config import Settings
from service.db import on_commit
from service.errors import BadRequest, NotFound, TooManyRequests
from service.files.repository import FileRepository
from service.jobs.auto import auto_batch_size, auto_epochs, auto_learning_rate
from service.jobs.queueing import AUTO_CPUS, dequeue_quietly, enqueue_quietly
from service.jobs.repository import QUEUED_STATES, JobRepository
from service.jobs.schemas import (
    CheckpointList,
    CheckpointOut,
    EventList,
    EventOut,
    HyperparametersIn,
    JobCreate,
    JobError,
    JobList,
    JobOut,
    MethodIn,
    MetricList,
    MetricPoint,
    ResourcesIn,
    TrialList,
    TrialOut,
)
from service.jobs.state import TERMINAL, add_event, transition
from service.models import Checkpoint, Job, JobEvent, StoredFile, Tenant, Trial
from service.queue import FairQueue
from service.ray_backend import ComputeBackend, submission_id
from service.registry.catalog import Catalog, CatalogEntry
from service.storage import ArtifactStore
from service.tenants.service import effective_quotas
from workers.spec import (
    SEARCHABLE_PARAMS,
    TASK_FORMATS,
    DataFormat,
    FullAdapter,
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


def _int_or_none(value: float | None) -> int | None:
    return int(value) if value is not None else None


def job_out(job: Job) -> JobOut:
    hp = dict(job.hyperparameters or {})
    return JobOut(
        id=job.id,
        created_at=int(job.created_at),
        finished_at=_int_or_none(job.finished_at),
        started_at=_int_or_none(job.started_at),
        model=job.model,
        fine_tuned_model=job.fine_tuned_model,
        organization_id=job.tenant_id,
        status=job.status,
        hyperparameters=hp,
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
        task=job.task,
        adapter=job.adapter or {},
        resources=_resources_out(job.resources or {}),
        search=job.search,
        priority=job.priority,
        search_result=job.search_result,
        result=job.result,
    )


def _resources_out(resources: dict[str, Any]) -> dict[str, Any]:
    """What the job holds, as a user reads it: no GPU fields on a CPU job."""
    if resources.get("use_gpu"):
        return resources
    return {k: v for k, v in resources.items() if k != "gpus_per_worker"}


def event_out(e: JobEvent) -> EventOut:
    return EventOut(
        id=e.id,
        created_at=int(e.created_at),
        level=e.level,
        message=e.message,
        type=e.type,
        data=e.data,
    )


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
    return CheckpointOut(
        id=c.id,
        created_at=int(c.created_at),
        fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
        fine_tuning_job_id=c.job_id,
        metrics=c.metrics or {},
        step_number=c.step_number,
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


def _param_of(exc: ValidationError, prefix: str) -> str:
    loc = exc.errors()[0].get("loc", ())
    parts = [str(p) for p in loc if p not in ("lora", "full")]
    return ".".join([prefix, *parts]) if parts else prefix


class JobService:
    def __init__(
        self,
        session: Session,
        tenant: Tenant,
        *,
        settings: Settings,
        catalog: Catalog,
        store: ArtifactStore,
        backend: ComputeBackend | None = None,
        queue: FairQueue | None = None,
    ) -> None:
        self.session = session
        self.tenant = tenant
        self.repo = JobRepository(session, tenant.id)
        self.files = FileRepository(session, tenant.id)
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.backend = backend
        self.queue = queue

    # -- reads ---------------------------------------------------------------------------

    def _get(self, job_id: str) -> Job:
        job = self.repo.get(job_id)
        if job is None:
            raise NotFound(f"No fine-tuning job with id '{job_id}'.", param="fine_tuning_job_id")
        return job

    def get(self, job_id: str) -> JobOut:
        return job_out(self._get(job_id))

    def list(self, after: str | None, limit: int) -> JobList:
        page = self.repo.list_page(after, limit)
        if page is None:
            raise BadRequest(f"No fine-tuning job '{after}' to page after.", param="after")
        return JobList(data=[job_out(j) for j in page.items], has_more=page.has_more)

    def events(self, job_id: str, after: str | None, limit: int) -> EventList:
        self._get(job_id)
        page = self.repo.events(job_id, after, limit)
        if page is None:
            raise BadRequest(f"No event '{after}' of this job to page after.", param="after")
        return EventList(data=[event_out(e) for e in page.items], has_more=page.has_more)

    def metrics(self, job_id: str, after: str | None, limit: int) -> MetricList:
        self._get(job_id)
        page = self.repo.metric_events(job_id, after, limit)
        if page is None:
            raise BadRequest(f"No metric '{after}' of this job to page after.", param="after")
        points = [p for p in (metric_point(e) for e in page.items) if p is not None]
        return MetricList(data=points, has_more=page.has_more)

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> CheckpointList:
        self._get(job_id)
        page = self.repo.checkpoints(job_id, after, limit)
        if page is None:
            raise BadRequest(f"No checkpoint '{after}' of this job to page after.", param="after")
        data = [checkpoint_out(c) for c in page.items]
        return CheckpointList(
            data=data,
            has_more=page.has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    def trials(self, job_id: str) -> TrialList:
        self._get(job_id)
        return TrialList(data=[trial_out(t) for t in self.repo.trials(job_id)])

    # -- create --------------------------------------------------------------------------

    def create(self, body: JobCreate) -> JobOut:
        quotas = effective_quotas(self.tenant, self.settings)
        if quotas.max_queued_jobs is not None:
            queued = self.repo.count_in(QUEUED_STATES)
            if queued >= quotas.max_queued_jobs:
                raise TooManyRequests(
                    f"Tenant '{self.tenant.name}' already has {queued} queued jobs, its quota "
                    f"(max_queued_jobs={quotas.max_queued_jobs}); wait for some to start or "
                    "cancel some.",
                    code="quota_exceeded",
                )
        entry = self._entry(body.model)
        task = self._task(body, entry)
        training = self._file(body.training_file, "training_file", task)
        if training.format == "chat" and not entry.chat:
            raise BadRequest(
                f"Model '{entry.name}' has no chat template, so it cannot train on chat data; "
                "use prompt/completion or text data.",
                param="training_file",
                code="invalid_file_format",
            )
        validation = (
            self._file(body.validation_file, "validation_file", task)
            if body.validation_file
            else None
        )
        if task == "sequence_classification" and validation is not None:
            unknown = set(validation.labels or []) - set(training.labels or [])
            if unknown:
                raise BadRequest(
                    f"validation_file has labels the training file lacks: {sorted(unknown)[:5]}",
                    param="validation_file",
                )
        adapter = body.adapter or LoraAdapter()
        hp = self._hyperparameters(body)
        training_config = self._training_config(hp, entry, adapter.type, training)
        requested = body.resources or ResourcesIn()
        given = requested.cpus_per_worker
        # A search's trials share the cluster by their number instead (trial_slots).
        auto_cpus = body.search is None and not isinstance(given, float | int)
        resources = Resources.model_validate(
            {
                **requested.model_dump(exclude={"cpus_per_worker"}),
                # The least a worker needs; the scheduler gives it what is free at start.
                "cpus_per_worker": float(given) if isinstance(given, float | int) else 1.0,
            }
        )
        self._check_resources(resources.num_workers, resources.total_gpus, quotas.max_gpus)
        if body.search is not None:
            self._check_search(body.search, adapter, training_config, task, validation)
        if body.integrations:
            raise BadRequest("integrations are not supported by Tuneplane.", param="integrations")

        job_id = new_id("ftjob")
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        try:
            spec = JobSpec(
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
                seed=seed,
                adapter=adapter,
                training=training_config,
                resources=resources,
                search=body.search,
                labels=training.labels if task == "sequence_classification" else None,
            )
        except ValidationError as exc:
            raise BadRequest(str(exc.errors()[0]["msg"]), param=_param_of(exc, "spec")) from None

        ts = now()
        resolved_hp: dict[str, Any] = {
            "n_epochs": training_config.n_epochs,
            "batch_size": training_config.batch_size,
            **training_config.model_dump(exclude={"n_epochs", "batch_size"}),
        }
        if hp.learning_rate is None:
            # The rate relative to the base model's; meaningless beside an absolute rate.
            base_lr = entry.learning_rate.get(adapter.type, 2e-4)
            resolved_hp["learning_rate_multiplier"] = round(
                training_config.learning_rate / base_lr, 6
            )
        # Files are validated line by line when they are uploaded, so a job that passed the
        # checks above is born queued: it never waits in validating_files.
        job = Job(
            id=job_id,
            tenant_id=self.tenant.id,
            status="queued",
            model=entry.name,
            task=task,
            training_file=training.id,
            validation_file=validation.id if validation else None,
            suffix=body.suffix,
            seed=seed,
            priority=body.priority,
            hyperparameters=resolved_hp,
            method={"type": "supervised", "supervised": {"hyperparameters": resolved_hp}},
            metadata_=body.metadata,
            adapter=adapter.model_dump(),
            resources={**resources.model_dump(), AUTO_CPUS: auto_cpus},
            search=body.search.model_dump() if body.search else None,
            spec=spec.model_dump(mode="json"),
            result_files=[],
            created_at=ts,
            updated_at=ts,
        )
        add_event(
            self.session,
            job.id,
            self.tenant.id,
            f"Validated training file {training.id}"
            + (f" and validation file {validation.id}" if validation else "")
            + "; job queued",
            type_="status",
            data={"status": "queued"},
            created_at=ts,
        )
        self.repo.add(job)
        if self.queue is not None:
            queue = self.queue
            on_commit(self.session, lambda: enqueue_quietly(queue, job))
        return job_out(job)

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

    def _task(self, body: JobCreate, entry: CatalogEntry) -> Task:
        task = body.task or entry.tasks[0]
        if task not in entry.tasks:
            raise BadRequest(
                f"Model '{entry.name}' does not support task '{task}'; it supports "
                f"{', '.join(entry.tasks)}.",
                param="task",
            )
        return task

    def _file(self, file_id: str, param: str, task: Task) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise BadRequest(f"File '{file_id}' not found.", param=param, code="file_not_found")
        if stored.purpose != "fine-tune":
            raise BadRequest(
                f"File '{file_id}' has purpose '{stored.purpose}', not 'fine-tune'.", param=param
            )
        allowed = TASK_FORMATS[task]
        if stored.format not in allowed:
            raise BadRequest(
                f"File '{file_id}' is in format '{stored.format}', which task '{task}' cannot "
                f"train on (it needs {' or '.join(sorted(allowed))}).",
                param=param,
                code="invalid_file_format",
            )
        return stored

    def _hyperparameters(self, body: JobCreate) -> HyperparametersIn:
        method: MethodIn | None = body.method
        if method is not None and method.type != "supervised":
            raise BadRequest(
                f"method.type '{method.type}' is not supported; Tuneplane runs 'supervised'.",
                param="method.type",
            )
        from_method = method.supervised.hyperparameters if method and method.supervised else None
        if from_method is not None and body.hyperparameters is not None:
            raise BadRequest(
                "Give hyperparameters in method.supervised.hyperparameters or the legacy "
                "hyperparameters field, not both.",
                param="hyperparameters",
            )
        return from_method or body.hyperparameters or HyperparametersIn()

    def _training_config(
        self, hp: HyperparametersIn, entry: CatalogEntry, adapter_type: str, training: StoredFile
    ) -> TrainingConfig:
        multiplier = hp.learning_rate_multiplier
        if hp.learning_rate is not None and isinstance(multiplier, float | int):
            raise BadRequest(
                "Set learning_rate or learning_rate_multiplier, not both.",
                param="hyperparameters.learning_rate",
            )
        base_lr = entry.learning_rate.get(adapter_type, 2e-4)
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
            exclude={"n_epochs", "batch_size", "learning_rate_multiplier", "learning_rate"},
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

    def _check_resources(self, num_workers: int, gpus: float, max_gpus: int | None) -> None:
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

    def _check_search(
        self,
        search: SearchSpec,
        adapter: LoraAdapter | FullAdapter,
        config: TrainingConfig,
        task: Task,
        validation: StoredFile | None,
    ) -> None:
        for name, dist in search.space.items():
            param = f"search.space.{name}"
            if name not in SEARCHABLE_PARAMS:
                raise BadRequest(
                    f"'{name}' cannot be searched; searchable: "
                    + ", ".join(sorted(SEARCHABLE_PARAMS)),
                    param=param,
                )
            if name in LORA_PARAMS and adapter.type != "lora":
                raise BadRequest(f"'{name}' needs a LoRA adapter.", param=param)
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
        if search.metric.startswith("eval_") and validation is None:
            raise BadRequest(
                f"search.metric '{search.metric}' needs a validation_file.", param="search.metric"
            )
        if search.metric == "eval_accuracy" and task != "sequence_classification":
            raise BadRequest(
                "eval_accuracy is only reported for sequence_classification.",
                param="search.metric",
            )
        expected_mode = "max" if search.metric == "eval_accuracy" else "min"
        if search.mode != expected_mode:
            raise BadRequest(
                f"search.mode must be '{expected_mode}' for metric '{search.metric}'.",
                param="search.mode",
            )

    def _check_candidate(
        self,
        name: str,
        value: float | int | str,
        adapter: LoraAdapter | FullAdapter,
        config: TrainingConfig,
        param: str,
    ) -> None:
        if isinstance(value, str) or (name in INT_PARAMS and not float(value).is_integer()):
            raise BadRequest(
                f"{name} values must be {'integers' if name in INT_PARAMS else 'numbers'}.",
                param=param,
            )
        try:
            if name in LORA_PARAMS:
                LoraAdapter.model_validate({**adapter.model_dump(), LORA_PARAMS[name]: value})
            else:
                TrainingConfig.model_validate({**config.model_dump(), name: value})
        except ValidationError as exc:
            raise BadRequest(f"{value!r}: {exc.errors()[0]['msg']}", param=param) from None

    # -- cancel --------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobOut:
        job = self._get(job_id)
        if job.status in ("cancelled", "cancelling"):
            return job_out(job)
        if job.status in TERMINAL:
            raise BadRequest(
                f"Job {job_id} has already {job.status}; it cannot be cancelled.",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            )
        if transition(
            self.session,
            job_id,
            "cancelled",
            expected=("validating_files", "queued"),
            message="Job cancelled before it started",
        ):
            if self.queue is not None:
                queue = self.queue
                on_commit(self.session, lambda: dequeue_quietly(queue, job))
            return job_out(self._get(job_id))
        # It started meanwhile (or was already running): stop it on the cluster.
        stopping = transition(
            self.session,
            job_id,
            "cancelling",
            expected=("running",),
            message="Cancellation requested; stopping the training run",
        )
        if stopping and self.backend is not None:
            self.backend.stop(submission_id(job_id, job.attempts))
        return job_out(self._get(job_id))

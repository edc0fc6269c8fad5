"""Experiment trackers: a run's hyperparameters, per-step metrics and final model in MLflow
or Weights & Biases (a job's ``integrations``).

Only the rank-0 worker of a run tracks (`open_tracker` gives the others nothing to do). A
plain job is one tracker run named after the job; each trial of a search is its own run,
named after the job and the trial (W&B groups them by the job). A tracker that is down or
refuses the credentials never fails the job: its first error becomes one warning event and
the tracker is dropped for the rest of the run.

Credentials are the tenant's secrets (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN,
MLFLOW_TRACKING_USERNAME/PASSWORD). The control plane writes those a job's integrations
need to ``{output_uri}/tracker-secrets.json`` when it starts the job (never into the spec,
the entrypoint or the runtime env); the driver reads and removes that file
(`take_secrets`) and hands the values to the rank-0 worker inside `Tracking`, where they
become the tracker's own settings.

mlflow (mlflow-skinny) and wandb are imported only when a job names them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from workers.report import Reporter
from workers.spec import Integration, JobSpec, MlflowIntegration, WandbIntegration

logger = logging.getLogger(__name__)

TRACKER_SECRETS_FILE = "tracker-secrets.json"
# The tenant secrets each tracker reads, by the names its own client gives them.
TRACKER_SECRET_NAMES: dict[str, tuple[str, ...]] = {
    "wandb": ("WANDB_API_KEY",),
    "mlflow": ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
}
# Metrics that are bookkeeping rather than curves.
NOT_TRACKED = frozenset({"step", "total_steps", "trial_id", "kind"})
# MLflow requests: a tracker that does not answer costs the run this much once, not a
# retry loop of minutes (mlflow's default) at every step.
MLFLOW_TIMEOUT_S = "10"
MLFLOW_FLUSH_S = 2.0
MLFLOW_BATCH = 1000  # MLflow's most metrics per log-batch request

RunEnd = Literal["finished", "failed", "paused"]


def secrets_uri(output_uri: str) -> str:
    return f"{output_uri.rstrip('/')}/{TRACKER_SECRETS_FILE}"


def secret_names(integrations: Sequence[Integration]) -> list[str]:
    """The tenant secrets a job's integrations may use, in a stable order."""
    names: list[str] = []
    for integration in integrations:
        names += [n for n in TRACKER_SECRET_NAMES[integration.type] if n not in names]
    return names


def take_secrets(output_uri: str) -> dict[str, str]:
    """The secrets the control plane left for this run; the file is removed once read, so
    they rest in the artifact store only between the job's start and its driver's."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(secrets_uri(output_uri))
    if not fs.exists(path):
        return {}
    with fs.open(path, "r", encoding="utf-8") as f:
        raw = json.load(f)
    fs.rm(path)
    return {str(k): str(v) for k, v in dict(raw).items()}


@dataclass(frozen=True)
class Tracking:
    """What the rank-0 worker needs to track a run; the secrets never show in a repr."""

    integrations: tuple[Integration, ...]
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    trial_id: str | None = None

    def for_trial(self, trial_id: str) -> Tracking:
        return replace(self, trial_id=trial_id)


class Tracker(Protocol):
    """One tracker run: started with the hyperparameters, fed metrics, ended once."""

    label: str

    def start(self, params: dict[str, Any]) -> None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def end(self, how: RunEnd, summary: dict[str, str]) -> None: ...


def redact(text: str, secrets: Mapping[str, str]) -> str:
    for value in secrets.values():
        if value:
            text = text.replace(value, "***")
    return text


class Guarded:
    """A tracker whose first error becomes one warning event and ends its tracking: a
    tracker is an observer, and the job goes on without it."""

    def __init__(
        self, tracker: Tracker, kind: str, reporter: Reporter | None, secrets: Mapping[str, str]
    ) -> None:
        self.tracker = tracker
        self.kind = kind
        self.reporter = reporter
        self.secrets = secrets
        self.label = tracker.label
        self.broken = False

    def _fail(self, exc: BaseException) -> None:
        self.broken = True
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = redact(
            f"{self.label} unavailable: {type(exc).__name__}: {first[:300]}; training goes "
            "on without it",
            self.secrets,
        )
        logger.warning("%s", text)
        if self.reporter is not None:
            self.reporter.message(text, level="warn", tracker=self.kind)

    def start(self, params: dict[str, Any]) -> None:
        self._call(self.tracker.start, params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._call(self.tracker.log, metrics, step)

    def end(self, how: RunEnd, summary: dict[str, str]) -> None:
        self._call(self.tracker.end, how, summary)

    def _call(self, method: Any, *args: Any) -> None:
        if self.broken:
            return
        try:
            method(*args)
        except Exception as exc:
            self._fail(exc)


class Trackers:
    """Several trackers as one (none: a run that tracks nothing); each fails on its own."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)
        self.ended = False

    def start(self, params: dict[str, Any]) -> None:
        for t in self.trackers:
            t.start(params)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {
            k: float(v)
            for k, v in metrics.items()
            if k not in NOT_TRACKED and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if numbers:
            for t in self.trackers:
                t.log(numbers, step)

    def end(self, how: RunEnd, summary: dict[str, str] | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        for t in self.trackers:
            t.end(how, summary or {})


def run_key(spec: JobSpec, trial_id: str | None) -> str:
    """The run's id in the tracker: the job's, and the trial's for a search trial. A
    restarted worker or a resumed job finds its run again by it."""
    return f"{spec.job_id}-{trial_id}" if trial_id else spec.job_id


def run_params(spec: JobSpec, trial_id: str | None) -> dict[str, Any]:
    """The resolved hyperparameters and what the run is, flat."""
    params: dict[str, Any] = {
        "job_id": spec.job_id,
        "base_model": spec.base_model.name,
        "task": spec.task,
        "method": spec.method,
        "seed": spec.seed,
        "num_workers": spec.resources.num_workers,
        **spec.training.model_dump(),
        **{
            f"adapter_{k}" if k != "type" else "adapter": v
            for k, v in spec.adapter.model_dump().items()
        },
    }
    if spec.dpo is not None:
        params["dpo_beta"] = spec.dpo.beta
    if trial_id is not None:
        params["trial_id"] = trial_id
    if spec.init_from is not None:
        params["init_from"] = spec.init_from.model
    return params


def model_reference(spec: JobSpec, tracking: Tracking | None) -> dict[str, str]:
    """What a finished run names as its outcome: the model the job publishes. A search
    trial's names none: the search picks the winner after its trials end."""
    if tracking is not None and tracking.trial_id is not None:
        return {}
    from workers.publish import artifact_uri

    reference = {"artifact_uri": artifact_uri(spec)}
    if spec.fine_tuned_model:
        reference["fine_tuned_model"] = spec.fine_tuned_model
    return reference


def open_tracker(
    tracking: Tracking | None, spec: JobSpec, reporter: Reporter | None, rank: int
) -> Trackers:
    """The run's trackers, started with its hyperparameters; none but on rank 0."""
    if tracking is None or not tracking.integrations or rank != 0:
        return Trackers([])
    trial_id = tracking.trial_id
    built: list[Tracker] = []
    for integration in tracking.integrations:
        tracker: Tracker
        if isinstance(integration, MlflowIntegration):
            tracker = MlflowTracker(integration, spec, trial_id, tracking.secrets)
        else:
            tracker = WandbTracker(integration, spec, trial_id, tracking.secrets)
        built.append(Guarded(tracker, integration.type, reporter, tracking.secrets))
    trackers = Trackers(built)
    trackers.start(run_params(spec, trial_id))
    return trackers


# ---------------------------------------------------------------------------- MLflow


class MlflowTracker:
    def __init__(
        self,
        integration: MlflowIntegration,
        spec: JobSpec,
        trial_id: str | None,
        secrets: Mapping[str, str],
    ) -> None:
        self.settings = integration.mlflow
        self.spec = spec
        self.trial_id = trial_id
        self.secrets = {k: v for k, v in secrets.items() if k in TRACKER_SECRET_NAMES["mlflow"]}
        self.label = f"MLflow tracking at {self.settings.tracking_uri}"
        self.key = run_key(spec, trial_id)
        self.client: Any = None
        self.run_id: str | None = None
        self.pending: list[Any] = []
        self.flushed_at = time.monotonic()

    def start(self, params: dict[str, Any]) -> None:
        # mlflow reads its credentials and request settings from the environment only; this
        # process is the run's rank-0 worker, alone in tracking.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", MLFLOW_TIMEOUT_S)
        os.environ.update(self.secrets)
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        experiment_id = self._experiment_id()
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`tuneplane.run` = '{self.key}'", max_results=1
        )
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return  # params are immutable in MLflow and this run has them
        name = self.settings.name or self.spec.job_id
        tags = {"tuneplane.run": self.key, "tuneplane.job_id": self.spec.job_id}
        if self.trial_id is not None:
            name = f"{name}-{self.trial_id}"
            tags["tuneplane.trial_id"] = self.trial_id
        run = self.client.create_run(experiment_id, run_name=name, tags=tags)
        self.run_id = run.info.run_id
        self.client.log_batch(
            self.run_id,
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag("mlflow.runName", name)],
        )

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        name = self.settings.experiment
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except MlflowException:
            # A search's trials start together: another one may have just created it.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, v, now, step) for k, v in metrics.items()]
        if time.monotonic() - self.flushed_at >= MLFLOW_FLUSH_S:
            self._flush()

    def _flush(self) -> None:
        self.flushed_at = time.monotonic()
        while self.pending and self.run_id is not None:
            batch = self.pending[:MLFLOW_BATCH]
            self.client.log_batch(self.run_id, metrics=batch)
            del self.pending[:MLFLOW_BATCH]

    def end(self, how: RunEnd, summary: dict[str, str]) -> None:
        if self.run_id is None:
            return
        self._flush()
        for key, value in summary.items():
            self.client.set_tag(self.run_id, key, value)
        status = {"finished": "FINISHED", "failed": "FAILED", "paused": "KILLED"}[how]
        self.client.set_terminated(self.run_id, status=status)


# ---------------------------------------------------------------------------- W&B


class WandbTracker:
    def __init__(
        self,
        integration: WandbIntegration,
        spec: JobSpec,
        trial_id: str | None,
        secrets: Mapping[str, str],
    ) -> None:
        self.settings = integration.wandb
        self.spec = spec
        self.trial_id = trial_id
        self.api_key = secrets.get("WANDB_API_KEY")
        where = f"{self.settings.entity}/" if self.settings.entity else ""
        self.label = f"W&B project {where}{self.settings.project}"
        self.run: Any = None

    def start(self, params: dict[str, Any]) -> None:
        import tempfile

        import wandb

        # WANDB_MODE (e.g. offline) and WANDB_DIR come from the workers' environment; the
        # run's files go to a folder of its own otherwise.
        directory = os.environ.get("WANDB_DIR") or tempfile.mkdtemp(prefix="tuneplane-wandb-")
        name = self.settings.name or self.spec.job_id
        if self.trial_id is not None:
            name = f"{name}-{self.trial_id}"
        self.run = wandb.init(
            project=self.settings.project,
            entity=self.settings.entity,
            name=name,
            id=run_key(self.spec, self.trial_id),
            group=self.spec.job_id if self.trial_id is not None else None,
            tags=list(self.settings.tags),
            config=params,
            dir=directory,
            resume="allow",
            settings=wandb.Settings(
                api_key=self.api_key, silent=True, console="off", init_timeout=30
            ),
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def end(self, how: RunEnd, summary: dict[str, str]) -> None:
        if self.run is None:
            return
        self.run.summary.update(summary)
        self.run.finish(exit_code=1 if how == "failed" else 0)
        self.run = None

"""Hyperparameter search: a Ray Tune experiment whose trials each run the Ray Train recipe.

Under Ray Train V2 a trainer cannot be handed to `Tuner`; each trial is instead a Tune
function trainable (`run_trial`) that builds a TorchTrainer with `build_trainer` for a copy
of the job's spec with the trial's hyperparameters, and forwards every report of it to
Tune with `TuneReportCallback`. Ray Tune samples the trials (random, grid or Optuna TPE),
stops poor ones early (ASHA) and keeps the experiment's state under the job's output URI.

Storage, under ``{output_uri}``:

- ``ray/tune/``: the Tune experiment (its state, for a resume after a stop)
- ``trials/<trial_id>/ray/train/checkpoint-*``: each trial's Ray Train checkpoints
- ``model/``: the winning trial's final checkpoint, published like a plain job's model

Events: one ``trial`` event when a trial starts, after each of its reports and when it ends
(``terminated``, ``early_stopped`` or ``error``); its per-step ``metrics``/``eval`` events
carry its ``trial_id``; the ``result`` event names the winner in ``best_trial``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from ray.tune import Callback, Stopper

from workers.data import JobData, StepPlan, plan_steps
from workers.report import Reporter
from workers.spec import (
    Choice,
    Grid,
    JobSpec,
    LogUniform,
    LoraAdapter,
    SearchSpec,
    Uniform,
)

logger = logging.getLogger(__name__)

EXPERIMENT_NAME = "tune"
TRIALS_DIR = "trials"
# ASHA keeps the best 1/REDUCTION_FACTOR of the trials at each rung. 2 rather than Tune's 4:
# searches here have few trials, and with 4 almost every trial would be stopped at once.
REDUCTION_FACTOR = 2
TRIAL_DRIVER_CPUS = 0.01
# Actors of a running search: Tune's function trials, and the Ray Train controller, workers
# and data split coordinator of each trial's TorchTrainer.
SEARCH_ACTORS = frozenset({"ImplicitFunc", "TrainController", "RayTrainWorker", "SplitCoordinator"})
LORA_FIELDS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}
INT_PARAMS = frozenset({"batch_size", "n_epochs", "lora_r", "lora_alpha"})
# What the recipe reports (workers.train.FineTuneRecipe._report_metrics plus evaluation);
# the rest of a Tune result is Tune's bookkeeping.
TRIAL_METRICS = (
    "train_loss",
    "eval_loss",
    "eval_accuracy",
    "step",
    "epoch",
    "trained_tokens",
    "learning_rate",
    "total_steps",
)

# Set by SIGINT (Ray's stop_job): the stopper then ends the experiment.
_stop_requested = threading.Event()


# ------------------------------------------------------------------------- the space


def apply_params(spec: JobSpec, params: dict[str, Any], trial_id: str) -> JobSpec:
    """The job's spec with a trial's hyperparameters and its own output directory."""
    training = spec.training.model_dump()
    adapter = spec.adapter.model_dump()
    for name, value in params.items():
        value = round(value) if name in INT_PARAMS else value
        if name in LORA_FIELDS:
            if not isinstance(spec.adapter, LoraAdapter):
                raise ValueError(f"'{name}' needs a LoRA adapter")
            adapter[LORA_FIELDS[name]] = value
        else:
            training[name] = value
    return spec.model_validate(
        {
            **spec.model_dump(),
            "training": training,
            "adapter": adapter,
            "output_uri": trial_output_uri(spec.output_uri, trial_id),
            "search": None,
        }
    )


def trial_output_uri(output_uri: str, trial_id: str) -> str:
    return f"{output_uri.rstrip('/')}/{TRIALS_DIR}/{trial_id}"


def param_space(search: SearchSpec) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for name, dist in search.space.items():
        if isinstance(dist, Grid):
            space[name] = tune.grid_search(list(dist.values))
        elif isinstance(dist, Choice):
            space[name] = tune.choice(list(dist.values))
        elif isinstance(dist, Uniform):
            space[name] = tune.uniform(dist.low, dist.high)
        elif isinstance(dist, LogUniform):
            space[name] = tune.loguniform(dist.low, dist.high)
    return space


def _candidates(spec: JobSpec, name: str) -> list[float]:
    assert spec.search is not None
    dist = spec.search.space.get(name)
    if dist is None:
        return [float(getattr(spec.training, name))]
    if isinstance(dist, Choice | Grid):
        return [float(v) for v in dist.values]
    return [dist.low, dist.high]


def step_bounds(spec: JobSpec, train_examples: int) -> tuple[int, int]:
    """(first report step of the quickest trial, total steps of the longest trial).

    ASHA needs both: it stops every trial at `max_t`, so that must not fall short of any
    trial's length, and its first rung must come at a step some trial reports at.
    """
    longest, first = 1, math.inf
    for batch_size in _candidates(spec, "batch_size"):
        for n_epochs in _candidates(spec, "n_epochs"):
            training = spec.training.model_copy(
                update={"batch_size": round(batch_size), "n_epochs": round(n_epochs)}
            )
            plan = plan_steps(spec.model_copy(update={"training": training}), train_examples)
            longest = max(longest, plan.total_steps)
            every = spec.training.checkpoint_every_steps or plan.steps_per_epoch
            first = min(first, every, plan.total_steps)
    return int(first), longest


def search_algorithm(search: SearchSpec, seed: int) -> Any:
    # More trials at once than the control plane planned for would hold the CPUs that the
    # trials' data pipelines need, and the cluster deadlocks.
    concurrency = search.max_concurrent_trials or 1
    if search.algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator

    # Seeded: the same job samples the same trials (and a benchmark can give ASHA and FIFO
    # the same ones). TuneConfig cannot limit this generator's concurrency; it can itself.
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)


def trial_scheduler(search: SearchSpec, first_report: int, longest: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if search.scheduler == "fifo":
        return FIFOScheduler()
    # Rungs on optimizer steps, so trials of different lengths are compared at equal
    # training; the first rung at the first report, so a poor trial is stopped early.
    return ASHAScheduler(
        time_attr="step",
        max_t=longest,
        grace_period=min(first_report, longest),
        reduction_factor=REDUCTION_FACTOR,
    )


# ------------------------------------------------------------------------- one trial


def run_trial(
    config: dict[str, Any],
    *,
    spec: JobSpec,
    data: JobData,
    models_dir: str,
    reporter: Reporter,
) -> None:
    """Tune function trainable: one TorchTrainer run with the trial's hyperparameters."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from workers.train import build_trainer

    trial_id = tune.get_context().get_trial_id()
    trial_spec = apply_params(spec, config, trial_id)
    plan = plan_steps(trial_spec, data.train_examples)
    trial_reporter = Reporter(reporter.job_id, reporter.tenant_id, reporter.sink, trial_id=trial_id)
    trainer = build_trainer(
        trial_spec,
        data,
        plan,
        models_dir=models_dir,
        reporter=trial_reporter,
        # Trial checkpoints are named in the trial events; the job's checkpoints would
        # otherwise mix the steps of every trial.
        checkpoint_events=False,
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()


# ------------------------------------------------------------------------- events


def trial_checkpoint_uri(output_uri: str, trial_id: str, checkpoint_path: str | None) -> str | None:
    from workers.train import checkpoint_uri, run_storage_uri

    if not checkpoint_path:
        return None
    return checkpoint_uri(run_storage_uri(trial_output_uri(output_uri, trial_id)), checkpoint_path)


def _recipe_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {
        k: result[k]
        for k in TRIAL_METRICS
        if isinstance(result.get(k), int | float) and not isinstance(result.get(k), bool)
    }


def early_stopped(result: dict[str, Any]) -> bool:
    """A trial that ended before its last step was stopped by the scheduler."""
    step, total = result.get("step"), result.get("total_steps")
    return isinstance(step, int | float) and isinstance(total, int | float) and step < total


class TrialEvents:
    """Tune callback on the driver: a ``trial`` event per trial start, report and end."""

    def __init__(self, reporter: Reporter, spec: JobSpec) -> None:
        assert spec.search is not None
        self.reporter = reporter
        self.output_uri = spec.output_uri
        self.search = spec.search
        self.best: dict[str, float] = {}
        self.checkpoints: dict[str, str] = {}

    def params(self, trial: Any) -> dict[str, Any]:
        return {name: trial.config.get(name) for name in self.search.space}

    def emit(self, trial: Any, status: str, result: dict[str, Any] | None = None) -> None:
        result = result if result is not None else (trial.last_result or {})
        trial_id = str(trial.trial_id)
        uri = trial_checkpoint_uri(self.output_uri, trial_id, result.get("checkpoint_path"))
        if uri:
            self.checkpoints[trial_id] = uri
        value = result.get(self.search.metric)
        if isinstance(value, int | float) and not math.isnan(value):
            best = self.best.get(trial_id)
            better = best is None or (value < best if self.search.mode == "min" else value > best)
            if better:
                self.best[trial_id] = float(value)
        self.reporter.emit(
            "trial",
            f"trial {trial_id} {status.replace('_', ' ')}",
            {
                "trial_id": trial_id,
                "status": status,
                "params": self.params(trial),
                "metrics": _recipe_metrics(result),
                "best_metric": self.best.get(trial_id),
                "iterations": int(result.get("training_iteration", 0) or 0),
                "checkpoint_uri": self.checkpoints.get(trial_id),
            },
            level="warn" if status == "error" else "info",
        )


class TrialEventsCallback(Callback):
    def __init__(self, events: TrialEvents) -> None:
        self.events = events

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.events.emit(trial, "running", {})

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self.events.emit(trial, "running", result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self.events.emit(trial, "early_stopped" if early_stopped(last) else "terminated", last)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.events.emit(trial, "error")


class StopOnSignal(Stopper):
    """Ends the whole experiment once the job was told to stop."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return _stop_requested.is_set()


@contextmanager
def _graceful_sigint() -> Iterator[None]:
    """The first SIGINT stops the experiment cleanly (trials stopped, state saved); a
    second one interrupts at once.

    Tune's own handler does the same but only logs it, and the job must end `stopped`.
    """
    previous = signal.getsignal(signal.SIGINT)
    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        logger.warning("stop requested: ending the search and stopping its trials")
        _stop_requested.set()
        signal.signal(signal.SIGINT, previous)

    _stop_requested.clear()
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env


# ------------------------------------------------------------------------- the search


def _wait_for_trials_to_end(timeout_s: float = 60.0) -> None:
    """Waits until no trial, Train controller or Train worker of this driver is alive.

    Tune kills a stopped trial's actor, and Ray then kills the TorchTrainer it owns, but
    that takes a moment: until then its workers still train (and send events), and the
    job must not say it stopped while something of it still runs.
    """
    import time

    import ray
    from ray.util.state import list_actors

    job_id = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [
            a.class_name
            for a in list_actors(
                filters=[("job_id", "=", job_id), ("state", "=", "ALIVE")], limit=10_000
            )
            if a.class_name in SEARCH_ACTORS
        ]
        if not alive:
            return
        if time.monotonic() > deadline:
            logger.warning("still alive %.0f s after the stop: %s", timeout_s, alive)
            return
        time.sleep(0.5)


class SearchFailed(Exception):
    """Every trial failed; `errors` holds each trial's exception."""

    def __init__(self, message: str, errors: list[BaseException]) -> None:
        super().__init__(message)
        self.errors = errors
        self.__cause__ = errors[0] if errors else None


def build_tuner(spec: JobSpec, data: JobData, reporter: Reporter, models_dir: str) -> Any:
    from ray import tune

    from workers.train import storage_path

    search = spec.search
    assert search is not None
    first_report, longest = step_bounds(spec, data.train_examples)
    trainable = tune.with_parameters(
        run_trial, spec=spec, data=data, models_dir=models_dir, reporter=reporter
    )
    # The trial itself only waits on its TorchTrainer, whose workers ask for the job's
    # resources; giving the trial a CPU as well would hold CPUs the workers need. A token
    # share rather than none: Tune cannot place an empty resource request.
    trainable = tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPUS})
    path, filesystem = storage_path(spec.output_uri)
    events = TrialEvents(reporter, spec)
    return tune.Tuner(
        trainable,
        param_space=param_space(search),
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            search_alg=search_algorithm(search, spec.seed),
            scheduler=trial_scheduler(search, first_report, longest),
            # A grid is enumerated once; other algorithms draw num_trials configurations.
            num_samples=1 if search.algorithm == "grid" else search.num_trials,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_NAME,
            storage_path=path,
            storage_filesystem=filesystem,
            # Ray Train already retries lost workers inside a trial; a trial that still
            # fails is reported, not rerun.
            failure_config=tune.FailureConfig(max_failures=0),
            stop=StopOnSignal(),
            callbacks=[TrialEventsCallback(events)],
            verbose=0,
        ),
    )


def best_result(results: list[Any], metric: str, mode: str) -> Any:
    """The trial whose final metric is best: its final checkpoint is what gets published."""
    scored = [
        r
        for r in results
        if r.error is None
        and isinstance((r.metrics or {}).get(metric), int | float)
        and not math.isnan(r.metrics[metric])
        and (r.metrics or {}).get("checkpoint_path")
    ]
    if not scored:
        return None
    key = (lambda r: r.metrics[metric]) if mode == "min" else (lambda r: -r.metrics[metric])
    return min(scored, key=key)


def run_search(
    spec: JobSpec, data: JobData, plan: StepPlan, reporter: Reporter, models_dir: str
) -> dict[str, Any]:
    """Runs the experiment and publishes the best trial; returns the result event's data.

    Raises KeyboardInterrupt when the job was stopped, SearchFailed when every trial
    failed.
    """
    from ray.train import Checkpoint

    from workers.run_job import JobError, publish
    from workers.train import storage_path

    search = spec.search
    assert search is not None
    tuner = build_tuner(spec, data, reporter, models_dir)
    with _graceful_sigint():
        grid = tuner.fit()
    if _stop_requested.is_set():
        _wait_for_trials_to_end()
        raise KeyboardInterrupt("the search was stopped")
    results = [grid[i] for i in range(len(grid))]
    errors = [r.error for r in results if r.error is not None]
    if results and len(errors) == len(results):
        raise SearchFailed(f"all {len(results)} trials of the search failed", errors)
    best = best_result(results, search.metric, search.mode)
    if best is None:
        raise JobError(
            f"no trial reported {search.metric!r}; "
            + (
                "add a validation_file or search on train_loss"
                if search.metric.startswith("eval_")
                else "check the training data"
            ),
            code="no_metric",
        )
    trial_id = str(best.metrics["trial_id"])
    metrics = _recipe_metrics(best.metrics)
    params = {name: best.config.get(name) for name in search.space}
    reporter.status("saving", f"publishing the model of the best trial, {trial_id}")
    trial_spec = apply_params(spec, params, trial_id)
    _, filesystem = storage_path(trial_spec.output_uri)
    checkpoint = Checkpoint(best.metrics["checkpoint_path"], filesystem)
    with checkpoint.as_directory() as directory:
        uri = publish(
            trial_spec.model_copy(update={"output_uri": spec.output_uri}),
            Path(directory),
            models_dir,
            {**metrics, "trial_id": trial_id, "params": params},
        )
    total_tokens = sum(int((r.metrics or {}).get("trained_tokens", 0)) for r in results)
    total_steps = sum(int((r.metrics or {}).get("step", 0)) for r in results)
    return {
        "artifact_uri": uri,
        "adapter": spec.adapter.type,
        # Every trial's tokens: what the search cost, not only what the winner trained on.
        "trained_tokens": total_tokens,
        "steps": int(metrics.get("step", 0)),
        "metrics": metrics,
        "checkpoint_uri": trial_checkpoint_uri(
            spec.output_uri, trial_id, best.metrics["checkpoint_path"]
        ),
        "lora": trial_spec.adapter.model_dump()
        if isinstance(trial_spec.adapter, LoraAdapter)
        else None,
        "best_trial": {
            "trial_id": trial_id,
            "metric": search.metric,
            "value": float(best.metrics[search.metric]),
            "params": params,
        },
        "search": {
            "trials": len(results),
            "failed_trials": len(errors),
            "early_stopped_trials": sum(
                1 for r in results if r.error is None and early_stopped(r.metrics or {})
            ),
            "total_steps": total_steps,
        },
    }

"""Hyperparameter search: a Ray Tune experiment whose trials each run the Ray Train recipe.

Under Ray Train V2 a trainer cannot be handed to `Tuner`; each trial is instead a Tune
function trainable (`run_trial`) that builds a TorchTrainer with `build_trainer` for a copy
of the job's spec with the trial's hyperparameters, and forwards every report of it to
Tune with `TuneReportCallback`. Ray Tune samples the trials (random, grid or Optuna TPE),
stops poor ones early (ASHA) and keeps the experiment's state under the job's output URI.

The parts: `workers.search_space` (what is sampled, the algorithm and the scheduler),
`workers.trial_events` (a ``trial`` event per trial start, report and end) and, here, the
driver: the trainable, the Tuner, stopping on SIGINT and publishing the best trial.

Storage, under ``{output_uri}`` (`workers.storage`):

- ``ray/tune/``: the Tune experiment (its state, for a resume after a stop)
- ``trials/<trial_id>/ray/train/checkpoint-*``: each trial's Ray Train checkpoints
- ``model/``: the winning trial's final checkpoint, published like a plain job's model

A trial's per-step ``metrics``/``eval`` events carry its ``trial_id``; the ``result``
event names the winner in ``best_trial``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from ray.tune import Callback, Stopper

from workers.checkpoints import PAUSED_METRIC
from workers.control import PauseFlag
from workers.data import JobData, StepPlan, plan_steps
from workers.errors import JobError
from workers.publish import publish
from workers.records import BestTrial, ResultData, SearchSummary
from workers.report import Reporter
from workers.search_space import (
    apply_params,
    param_space,
    search_algorithm,
    step_bounds,
    trial_scheduler,
)
from workers.spec import RUN_SAVING, JobSpec, LoraAdapter
from workers.storage import storage_path, trial_checkpoint_uri
from workers.trackers import Tracking
from workers.trial_events import TrialEvents, TrialEventsCallback, early_stopped, recipe_metrics

logger = logging.getLogger(__name__)

EXPERIMENT_NAME = "tune"
TRIAL_DRIVER_CPUS = 0.01
# Actors of a running search: Tune's function trials, and the Ray Train controller, workers
# and data split coordinator of each trial's TorchTrainer.
SEARCH_ACTORS = frozenset({"ImplicitFunc", "TrainController", "RayTrainWorker", "SplitCoordinator"})

# Set by SIGINT (Ray's stop_job): the stopper then ends the experiment.
_stop_requested = threading.Event()
# Set by `PauseWatcher` when it ended the experiment for a pause. A module's, not the
# callback's: a restored Tuner runs the copy of the callback it was first built with.
_paused = threading.Event()
# How long a pause waits for the running trials to save their checkpoints, and how long a
# trial that saved one waits for the driver to end the experiment.
PAUSE_WAIT_S = 120.0
PAUSE_HOLD_S = 600.0


# ------------------------------------------------------------------------- one trial


def run_trial(
    config: dict[str, Any],
    *,
    spec: JobSpec,
    data: JobData,
    models_dir: str,
    reporter: Reporter,
    tracking: Tracking | None = None,
) -> None:
    """Tune function trainable: one TorchTrainer run with the trial's hyperparameters."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from workers.trainer import build_trainer

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
        # Every trial pauses when the job does.
        pause=PauseFlag(spec.output_uri),
        required_metric=spec.search.metric if spec.search is not None else None,
        # One tracker run per trial, named by it.
        tracking=tracking.for_trial(trial_id) if tracking is not None else None,
    )
    result = trainer.fit()
    if (result.metrics or {}).get(PAUSED_METRIC):
        # Returning would end the trial as finished. Held here, it is still running when
        # the driver interrupts the experiment (`PauseWatcher`), so a restored search
        # starts it again, and its TorchTrainer goes on from the checkpoint just saved.
        deadline = time.monotonic() + PAUSE_HOLD_S
        while time.monotonic() < deadline:
            time.sleep(1.0)
        raise RuntimeError(f"the search did not stop within {PAUSE_HOLD_S:.0f} s of a pause")


# ------------------------------------------------------------------------- stopping


class PauseWatcher(Callback):
    """Pauses the search: once the job is asked to pause (its trials see the same request
    and each saves a checkpoint at its next step), and every running trial has reported
    that checkpoint, it interrupts the experiment as Tune's own SIGUSR1 does: the state is
    saved with those trials unfinished, for `Tuner.restore` to start them again."""

    def __init__(self, output_uri: str) -> None:
        self.flag = PauseFlag(output_uri)
        self.paused: set[str] = set()
        self.asked_at: float | None = None
        self.interrupted = False

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if result.get(PAUSED_METRIC):
            self.paused.add(trial.trial_id)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self.interrupted or not self.flag.requested():
            return
        now = time.monotonic()
        self.asked_at = self.asked_at or now
        running = {t.trial_id for t in trials if t.status == "RUNNING"}
        # A trial still starting has no step to stop at yet: wait for it, for a while.
        if running <= self.paused or now - self.asked_at > PAUSE_WAIT_S:
            logger.warning(
                "pause requested: saving the search with %d trial(s) unfinished", len(running)
            )
            self.interrupted = True
            _paused.set()
            os.kill(os.getpid(), signal.SIGUSR1)


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


def build_tuner(
    spec: JobSpec,
    data: JobData,
    reporter: Reporter,
    models_dir: str,
    tracking: Tracking | None = None,
) -> Any:
    """The search's Tuner; a search that ran before (paused, or lost with its cluster)
    is restored, its unfinished trials going on from their checkpoints."""
    from ray import tune

    search = spec.search
    assert search is not None
    first_report, longest = step_bounds(spec, data.train_examples)
    trainable = tune.with_parameters(
        run_trial,
        spec=spec,
        data=data,
        models_dir=models_dir,
        reporter=reporter,
        tracking=tracking,
    )
    # The trial itself only waits on its TorchTrainer, whose workers ask for the job's
    # resources; giving the trial a CPU as well would hold CPUs the workers need. A token
    # share rather than none: Tune cannot place an empty resource request.
    trainable = tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPUS})
    path, filesystem = storage_path(spec.output_uri)
    experiment = f"{path.rstrip('/')}/{EXPERIMENT_NAME}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        reporter.message("resuming the search where it stopped", resumed_search=True)
        return tune.Tuner.restore(
            experiment,
            trainable,
            resume_unfinished=True,
            param_space=param_space(search),
            storage_filesystem=filesystem,
        )
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
            callbacks=[TrialEventsCallback(events), PauseWatcher(spec.output_uri)],
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
    spec: JobSpec,
    data: JobData,
    plan: StepPlan,
    reporter: Reporter,
    models_dir: str,
    tracking: Tracking | None = None,
) -> ResultData | None:
    """Runs the experiment and publishes the best trial; returns the result event's data,
    or None when a pause ended it (a later run of the job restores it).

    Raises KeyboardInterrupt when the job was stopped, SearchFailed when every trial
    failed.
    """
    from ray.train import Checkpoint

    search = spec.search
    assert search is not None
    tuner = build_tuner(spec, data, reporter, models_dir, tracking)
    _paused.clear()
    with _graceful_sigint():
        grid = tuner.fit()
    if _stop_requested.is_set():
        _wait_for_trials_to_end()
        raise KeyboardInterrupt("the search was stopped")
    if _paused.is_set():
        _wait_for_trials_to_end()
        return None
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
    metrics = recipe_metrics(best.metrics)
    params = {name: best.config.get(name) for name in search.space}
    reporter.status(RUN_SAVING, f"publishing the model of the best trial, {trial_id}")
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
    return ResultData(
        artifact_uri=uri,
        adapter=spec.adapter.type,
        # Every trial's tokens: what the search cost, not only what the winner trained on.
        trained_tokens=total_tokens,
        steps=int(metrics.get("step", 0)),
        metrics=metrics,
        checkpoint_uri=trial_checkpoint_uri(
            spec.output_uri, trial_id, best.metrics["checkpoint_path"]
        ),
        lora=trial_spec.adapter.model_dump()
        if isinstance(trial_spec.adapter, LoraAdapter)
        else None,
        best_trial=BestTrial(
            trial_id=trial_id,
            metric=search.metric,
            value=float(best.metrics[search.metric]),
            params=params,
        ),
        search=SearchSummary(
            trials=len(results),
            failed_trials=len(errors),
            early_stopped_trials=sum(
                1 for r in results if r.error is None and early_stopped(r.metrics or {})
            ),
            total_steps=total_steps,
        ),
    )

"""A search's ``trial`` events: a Tune callback on the driver that reports each trial.

One event when a trial starts, after each of its reports and when it ends (terminated,
early_stopped or error: the `workers.spec.TrialState` values), with its hyperparameters,
latest metrics, best value of the search metric so far and newest checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback

from workers.records import TrialData
from workers.report import Reporter
from workers.spec import (
    TRIAL_EARLY_STOPPED,
    TRIAL_ERROR,
    TRIAL_RUNNING,
    TRIAL_TERMINATED,
    JobSpec,
    TrialState,
)
from workers.storage import trial_checkpoint_uri

# What the recipe reports (workers.train.FineTuneRecipe._report_metrics plus evaluation);
# the rest of a Tune result is Tune's bookkeeping.
TRIAL_METRICS = (
    "train_loss",
    "eval_loss",
    "eval_accuracy",
    # DPO's (workers.objectives.Dpo).
    "eval_reward_accuracy",
    "eval_reward_margin",
    "eval_chosen_reward",
    "eval_rejected_reward",
    "step",
    "epoch",
    "trained_tokens",
    "learning_rate",
    "total_steps",
)


def recipe_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The recipe's own metrics in a Tune result."""
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
    """Builds and sends a trial's events; keeps each trial's best metric and checkpoint."""

    def __init__(self, reporter: Reporter, spec: JobSpec) -> None:
        assert spec.search is not None
        self.reporter = reporter
        self.output_uri = spec.output_uri
        self.search = spec.search
        self.best: dict[str, float] = {}
        self.checkpoints: dict[str, str] = {}

    def params(self, trial: Any) -> dict[str, Any]:
        return {name: trial.config.get(name) for name in self.search.space}

    def emit(self, trial: Any, status: TrialState, result: dict[str, Any] | None = None) -> None:
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
        self.reporter.trial(
            TrialData(
                trial_id=trial_id,
                status=status,
                params=self.params(trial),
                metrics=recipe_metrics(result),
                best_metric=self.best.get(trial_id),
                iterations=int(result.get("training_iteration", 0) or 0),
                checkpoint_uri=self.checkpoints.get(trial_id),
            )
        )


class TrialEventsCallback(Callback):
    """Tune callback on the driver: a ``trial`` event per trial start, report and end."""

    def __init__(self, events: TrialEvents) -> None:
        self.events = events

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.events.emit(trial, TRIAL_RUNNING, {})

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self.events.emit(trial, TRIAL_RUNNING, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        ended = TRIAL_EARLY_STOPPED if early_stopped(last) else TRIAL_TERMINATED
        self.events.emit(trial, ended, last)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.events.emit(trial, TRIAL_ERROR)

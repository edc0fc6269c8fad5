"""When a running job should finish (OpenAI's `estimated_finish`), from what it reported.

Pure functions over the progress the repository reads (`JobRepository.progress`): no
queries, no clock of their own (`now` is given), so each case can be computed by hand.

- A training run: the time a step takes, measured between its first and latest ``metrics``
  events of this run (so model loading and data preparation before the first step do not
  count, while evaluation and checkpoints between steps do), times the steps left.
- A search: the trials still running finish as their own steps say (or, before they have
  measured a step, as long as a typical trial takes); the trials not started yet run
  `concurrency` at a time after them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.models.status import TrialStatus

# Trials that ran to their end (or to the scheduler's stop): how long a trial takes.
_COMPLETED = (TrialStatus.TERMINATED, TrialStatus.EARLY_STOPPED)


@dataclass(frozen=True)
class StepSpan:
    """The training steps one run (or one trial) reported since it started."""

    first_step: int
    first_at: float
    last_step: int
    last_at: float
    # Steps the run will train in all; None when its workers did not say.
    total_steps: int | None


@dataclass(frozen=True)
class TrialProgress:
    """A search trial as its ``trial`` events left it, with the steps it reported."""

    status: str
    started_at: float
    # When it last reported (for an ended trial: when it ended).
    updated_at: float
    steps: StepSpan | None = None


@dataclass(frozen=True)
class JobProgress:
    """What one running job reported: its steps, or for a search each trial's."""

    steps: StepSpan | None = None
    trials: Sequence[TrialProgress] = field(default_factory=tuple)


def step_seconds(span: StepSpan) -> float | None:
    """Seconds per step between the first and the latest reported step; None before two
    steps were reported (one step gives no interval to measure)."""
    if span.last_step <= span.first_step:
        return None
    return max(span.last_at - span.first_at, 0.0) / (span.last_step - span.first_step)


def seconds_left(span: StepSpan | None) -> float | None:
    """Seconds the run still needs: the steps left at the measured step time."""
    if span is None or span.total_steps is None:
        return None
    per_step = step_seconds(span)
    if per_step is None:
        return None
    return max(span.total_steps - span.last_step, 0) * per_step


def run_finish(span: StepSpan | None, now: float) -> float | None:
    """When a training run finishes; None while no step time is measured."""
    left = seconds_left(span)
    return None if left is None else now + left


def search_finish(
    planned: int, concurrency: int, trials: Sequence[TrialProgress], now: float
) -> float | None:
    """When a search of `planned` trials, `concurrency` at once, finishes; None until a
    trial's length can be told (one ended, or one measured its step time)."""
    running = [t for t in trials if t.status == TrialStatus.RUNNING]
    pending = max(planned - len(trials), 0)
    lengths = [t.updated_at - t.started_at for t in trials if t.status in _COMPLETED]
    if not lengths:
        # No trial ended yet: what the running ones project for themselves.
        for t in running:
            left = seconds_left(t.steps)
            if left is not None:
                lengths.append(now - t.started_at + left)
    typical = sum(lengths) / len(lengths) if lengths else None
    lefts: list[float] = []
    for t in running:
        left = seconds_left(t.steps)
        if left is None:
            if typical is None:
                return None
            left = max(typical - (now - t.started_at), 0.0)
        lefts.append(left)
    if pending and typical is None:
        return None
    work = sum(lefts) + pending * (typical or 0.0)
    # The trials share `concurrency` slots, yet none finishes before its own end.
    return now + max(max(lefts, default=0.0), work / max(concurrency, 1))


def planned_trials(search: Mapping[str, Any]) -> int:
    """How many trials a search runs: every point of a grid, else `num_trials`."""
    if search.get("algorithm") == "grid":
        sizes = [
            len(dim.get("values") or [])
            for dim in (search.get("space") or {}).values()
            if isinstance(dim, Mapping) and dim.get("type") == "grid"
        ]
        return math.prod(sizes) if sizes else 1
    return int(search.get("num_trials") or 1)


def estimated_finish(
    search: Mapping[str, Any] | None, progress: JobProgress, now: float
) -> int | None:
    """A running job's `estimated_finish`, in whole Unix seconds; None when not known."""
    if search:
        concurrency = int(search.get("max_concurrent_trials") or 1)
        at = search_finish(planned_trials(search), concurrency, progress.trials, now)
    else:
        at = run_finish(progress.steps, now)
    return None if at is None else round(at)

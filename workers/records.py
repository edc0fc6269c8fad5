"""Typed ``data`` of the events a job reports, shared by the workers and the control plane.

The workers build these and `workers.report.Reporter` sends their `event_data()`; the
control plane may validate an event's ``data`` back into one. Like `workers.report` this
module imports neither torch nor ray.

Unknown fields are ignored (pydantic's default), so an event from a slightly older or
newer worker still validates. `event_data()` keeps the wire shape the events API has
always shown users: a field that is unset is left out, except the few that a consumer
has always seen as an explicit null (`NULLABLE`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from workers.spec import RunStatus, TrialState


class EventData(BaseModel):
    """Base of the records: how one becomes an event's ``data``."""

    # Fields sent as null rather than left out when they are None.
    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    def event_data(self) -> dict[str, Any]:
        # Python mode: `Reporter` turns numpy/torch scalars into JSON values itself.
        data = self.model_dump()
        return {k: v for k, v in data.items() if v is not None or k in self.NULLABLE}


class CheckpointData(EventData):
    """A ``checkpoint`` event: a checkpoint of the run and the metrics reported with it."""

    step: int
    checkpoint_uri: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    trial_id: str | None = None


class BestTrial(BaseModel):
    """The winner of a search: its hyperparameters and its final value of the metric."""

    trial_id: str
    metric: str
    value: float
    params: dict[str, Any]


class SearchSummary(BaseModel):
    """What a search ran, over all its trials."""

    trials: int
    failed_trials: int
    early_stopped_trials: int
    total_steps: int


class ResultData(EventData):
    """A ``result`` event, the last of a successful job: what was published and how."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset({"checkpoint_uri", "lora"})

    artifact_uri: str
    adapter: str
    trained_tokens: int
    steps: int
    metrics: dict[str, Any]
    checkpoint_uri: str | None = None
    # The LoRA hyperparameters the published adapter was trained with; None: a full model.
    lora: dict[str, Any] | None = None
    # A search only.
    best_trial: BestTrial | None = None
    search: SearchSummary | None = None


class TrialData(EventData):
    """A ``trial`` event: a search trial's state and its latest metrics."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset({"best_metric", "checkpoint_uri"})

    trial_id: str
    status: TrialState
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    best_metric: float | None = None
    iterations: int = 0
    checkpoint_uri: str | None = None


class StatusData(EventData):
    """A ``status`` event; a failed run's carries what went wrong.

    Only the fields given are sent: a run's progress is ``{"status": ...}`` alone, and
    ``retryable`` appears where the worker decided it.
    """

    status: RunStatus
    # Machine-readable reason of a failure (``invalid_data``, ``stopped``, ...).
    code: str | None = None
    # The request field a failure is about, when there is one.
    param: str | None = None
    # Not the user's doing: the control plane may run the job again.
    retryable: bool = False
    error_type: str | None = None
    # A paused run's last step: where the next run of the job goes on from.
    step: int | None = None

    def event_data(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude_none=True)

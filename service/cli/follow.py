"""What `tuneplane jobs follow` shows of a job until it ends: a live progress bar (steps or
trials, with epoch, training loss, validation loss and accuracy, and an ETA), a line per
validation pass, and the validation rows of the final summary.

Worker events reach the events API as type ``metrics`` events whose ``data.kind`` is
``metrics`` (a training step: ``train_loss``, ``epoch``, and ``train_accuracy`` for
classification or ``train_reward_accuracy`` for DPO...) or ``eval`` (a validation pass:
``step``, ``eval_loss`` and, for classification, ``eval_accuracy``; for DPO,
``eval_reward_accuracy`` and ``eval_reward_margin``); the ``succeeded`` status event carries
the finished run's final ``metrics``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from service.cli.client import call, console, err, when
from service.models.status import TERMINAL, JobStatus, TrialStatus

# The validation metrics, in display order, with the progress bar's short names.
EVAL_KEYS = {
    "eval_loss": "eval_loss",
    "eval_accuracy": "eval_acc",
    "eval_reward_accuracy": "eval_reward_acc",
    "eval_reward_margin": "eval_margin",
}
SUMMARY_NAMES = {
    "eval_loss": "validation loss",
    "eval_accuracy": "validation accuracy",
    "eval_reward_accuracy": "validation reward accuracy",
    "eval_reward_margin": "validation reward margin",
}
# A training step's accuracy (classification) or reward accuracy (DPO), with the progress
# bar's short names; the loss is shown apart.
TRAIN_KEYS = {"train_accuracy": "acc", "train_reward_accuracy": "reward_acc"}
# A search trial in one of these has ended: it counts towards the bar's trials done.
TRIAL_ENDED = (TrialStatus.TERMINATED, TrialStatus.EARLY_STOPPED, TrialStatus.ERROR)
# Following rides out a control plane restart (an upgrade, a replica moving) this long.
FOLLOW_PATIENCE_S = 300.0


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def eval_numbers(data: Any) -> dict[str, float]:
    """The validation metrics in `data` (a mapping), those that are numbers."""
    if not isinstance(data, dict):
        return {}
    found = {key: _number(data.get(key)) for key in EVAL_KEYS}
    return {key: value for key, value in found.items() if value is not None}


def finish_text(estimated_finish: Any, now: float | None = None) -> str | None:
    """The job's `estimated_finish` as a person reads it: the time, and how long until."""
    if not isinstance(estimated_finish, int | float) or isinstance(estimated_finish, bool):
        return None
    return f"{when(estimated_finish)} (in {_duration(estimated_finish - (now or time.time()))})"


def eta_column(estimated_finish: Any, now: float | None = None) -> str:
    """The progress bar's ETA: the time left by the service's estimate (it knows the
    measured step time, and for a search the trials left and how many run at once)."""
    if not isinstance(estimated_finish, int | float) or isinstance(estimated_finish, bool):
        return "ETA -:--:--"
    left = max(0, round(estimated_finish - (now or time.time())))
    return f"ETA {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def format_eval(numbers: dict[str, float]) -> str:
    return "  ".join(f"{key} {value:.4f}" for key, value in numbers.items())


def job_final_metrics(job: dict[str, Any]) -> dict[str, float]:
    """Validation metrics the job JSON itself carries (its result's metrics), if any."""
    result = job.get("result")
    for candidate in (
        result.get("metrics") if isinstance(result, dict) else None,
        job.get("metrics"),
        result,
    ):
        if numbers := eval_numbers(candidate):
            return numbers
    return {}


@dataclass
class FollowState:
    """The latest numbers seen in one job's events."""

    epoch: Any = None
    loss: float | None = None
    # The latest step's accuracy or reward accuracy (TRAIN_KEYS), those it reported.
    train: dict[str, float] = field(default_factory=dict)
    # The latest validation pass (of the job; a search's trials are not mixed in here).
    eval: dict[str, float] = field(default_factory=dict)
    eval_step: Any = None
    # The finished run's final validation metrics.
    final: dict[str, float] = field(default_factory=dict)

    def see(self, event: dict[str, Any], *, search: bool) -> str | None:
        """Take in one event; returns the line to print for a validation pass."""
        data = event.get("data") or {}
        kind = data.get("kind")
        if kind == "metrics" and not search:
            self.epoch = data.get("epoch")
            self.loss = _number(data.get("train_loss"))
            found = {key: _number(data.get(key)) for key in TRAIN_KEYS}
            self.train = {key: value for key, value in found.items() if value is not None}
        elif kind == "eval":
            numbers = eval_numbers(data)
            if not numbers:
                return None
            trial = data.get("trial_id")
            if not search:
                self.eval, self.eval_step = numbers, data.get("step")
            prefix = f"trial {trial} " if trial is not None else ""
            return f"{prefix}step {data.get('step')}: {format_eval(numbers)}"
        elif kind == "result" or data.get("status") == JobStatus.SUCCEEDED:
            self.final = eval_numbers(data.get("metrics")) or self.final
        return None

    def detail(self, epochs: Any) -> str:
        """The progress bar's text: epoch, training loss (and accuracy), latest validation
        metrics."""
        parts = []
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}/{epochs}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        parts += [f"{TRAIN_KEYS[key]} {value:.4f}" for key, value in self.train.items()]
        parts += [f"{EVAL_KEYS[key]} {value:.4f}" for key, value in self.eval.items()]
        return "  ".join(parts)


def validation_rows(job: dict[str, Any], state: FollowState | None = None) -> list[tuple[str, str]]:
    """The summary's validation rows: the finished job's metrics, else the last pass seen."""
    final = job_final_metrics(job) or (state.final if state else {})
    step = None
    if not final and state is not None and state.eval:
        final, step = state.eval, state.eval_step
    at = f" (step {step})" if step is not None else ""
    return [(SUMMARY_NAMES[key], f"{value:.4f}{at}") for key, value in final.items()]


class NewEvents:
    """New events of one job, oldest first, from the newest-first events API."""

    def __init__(self, client: httpx.Client, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.last_id: str | None = None

    def fresh(self) -> list[dict[str, Any]]:
        path = f"/v1/fine_tuning/jobs/{self.job_id}/events"
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
            page = call(self.client, "GET", path, params=params, patience_s=FOLLOW_PATIENCE_S)
            for e in page["data"]:
                if e["id"] == self.last_id:
                    page["has_more"] = False
                    break
                out.append(e)
            if not page["has_more"] or not page["data"]:
                break
            after = page["data"][-1]["id"]
        out.reverse()
        if out:
            self.last_id = out[-1]["id"]
        return out


class _Bar:
    """The progress bar of one job: training steps, or the trials of a search."""

    def __init__(self, progress: Progress, status: str, search: dict[str, Any] | None) -> None:
        self.progress = progress
        self.search = search
        self.unit = "trials" if search else "steps"
        self.task: TaskID = progress.add_task(status, total=None, detail="", eta=eta_column(None))
        self.trials_done: set[str] = set()

    def advance(self, data: dict[str, Any]) -> None:
        """Move the bar on by one event's data."""
        kind = data.get("kind")
        if kind == "metrics" and not self.search:
            if data.get("total_steps"):
                self.progress.update(self.task, total=int(data["total_steps"]))
            self.progress.update(self.task, completed=int(data.get("step", 0)))
        elif kind == "trial" and self.search:
            total = int(self.search.get("num_trials") or 0) or None
            self.progress.update(self.task, total=total)
            if data.get("status") in TRIAL_ENDED:
                self.trials_done.add(str(data.get("trial_id")))
                self.progress.update(self.task, completed=len(self.trials_done))

    def status(self, status: str) -> None:
        self.progress.update(self.task, description=f"{status} ({self.unit})")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),
        console=console,
    )


# Where following a job ends: it ended, or it waits for a resume.
STOPPED = TERMINAL | {JobStatus.PAUSED}


def until_ended(poll: Callable[[], dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    """Call `poll` (it shows what is new and returns the job) every second until the job
    has ended or paused, or `timeout_s` has passed; returns the job as last polled."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = poll()
        if job["status"] in STOPPED or time.monotonic() > deadline:
            return job
        time.sleep(1.0)


def follow_job(
    client: httpx.Client, job_id: str, timeout_s: float
) -> tuple[dict[str, Any], FollowState]:
    """Draw the job's progress until it ends; returns the ended job and what its events
    showed. Exits 1 if it paused, or is still going after `timeout_s`."""
    path = f"/v1/fine_tuning/jobs/{job_id}"
    job = call(client, "GET", path)
    epochs = (job.get("hyperparameters") or {}).get("n_epochs", "?")
    search = job.get("search")
    events = NewEvents(client, job_id)
    progress = _progress()
    bar = _Bar(progress, job["status"], search)
    seen = FollowState()  # the latest epoch, training loss and validation metrics

    def poll() -> dict[str, Any]:
        for e in events.fresh():
            bar.advance(e.get("data") or {})
            # Validation passes get a line each; training steps only move the bar.
            line = seen.see(e, search=bool(search))
            if e["type"] != "metrics" or line:
                progress.console.print(f"  [dim]{when(e['created_at'])}[/] "
                                       f"{escape(line or e['message'])}")  # fmt: skip
        progress.update(bar.task, detail=seen.detail(epochs))
        job = call(client, "GET", path, patience_s=FOLLOW_PATIENCE_S)
        bar.status(job["status"])
        progress.update(bar.task, eta=eta_column(job.get("estimated_finish")))
        return job

    with progress:
        job = until_ended(poll, timeout_s)
        if job["status"] == JobStatus.PAUSED:
            err.print(f"{job_id} is paused; `tuneplane jobs resume {job_id}` goes on from there")
            raise typer.Exit(1)
        if job["status"] not in TERMINAL:
            err.print(f"[red]{job_id} is still {job['status']} after {timeout_s:.0f} s")
            raise typer.Exit(1)
    return job, seen

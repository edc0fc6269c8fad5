"""What `tuneplane jobs follow` shows of a job's numbers: the progress bar's detail (epoch,
training loss, validation loss and accuracy), one line per validation pass, and the
validation rows of the final summary.

Worker events reach the events API as type ``metrics`` events whose ``data.kind`` is
``metrics`` (a training step: ``train_loss``, ``epoch``...) or ``eval`` (a validation pass:
``step``, ``eval_loss`` and, for classification, ``eval_accuracy``); the ``succeeded`` status
event carries the finished run's final ``metrics``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The validation metrics, in display order, with the progress bar's short names.
EVAL_KEYS = {"eval_loss": "eval_loss", "eval_accuracy": "eval_acc"}
SUMMARY_NAMES = {"eval_loss": "validation loss", "eval_accuracy": "validation accuracy"}


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
        elif kind == "eval":
            numbers = eval_numbers(data)
            if not numbers:
                return None
            trial = data.get("trial_id")
            if not search:
                self.eval, self.eval_step = numbers, data.get("step")
            prefix = f"trial {trial} " if trial is not None else ""
            return f"{prefix}step {data.get('step')}: {format_eval(numbers)}"
        elif kind == "result" or data.get("status") == "succeeded":
            self.final = eval_numbers(data.get("metrics")) or self.final
        return None

    def detail(self, epochs: Any) -> str:
        """The progress bar's text: epoch, training loss, latest validation metrics."""
        parts = []
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}/{epochs}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
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

"""Checkpoint retention: which of a job's checkpoints stay, and how a removed one is left.

A job keeps its last K checkpoints (K = the spec's ``num_checkpoints_to_keep``, which a
user sets as ``hyperparameters.num_checkpoints_to_keep``, 2 by default) and its best one.
"Best" is the lowest validation loss (``eval_loss``) among the checkpoints that carry one;
a job without validation data has none, and then it is the lowest training loss
(``train_loss``: the mean loss of the steps since the checkpoint before). A checkpoint's
``eval_loss`` is the latest evaluation's, so checkpoints taken between two evaluations
carry the same value; of those the earliest, the nearest to the evaluated weights, is
the best.

"Last" is the order the run reported them in, not the step number: a run that had to
start over (its Ray state lost) reports low steps again, and those are what Ray Train
would resume from.

The control plane decides, when it records a checkpoint (it holds every row of the job):
Ray Train's own `CheckpointConfig` keeps either the newest K or the best K by one score,
never both, so a run that reports its checkpoints to the control plane lets Ray keep all
of them (`workers.trainer.build_trainer`) and this module removes the rest.

A removed checkpoint's directory is emptied, not deleted: Ray Train's run snapshot lists
every checkpoint the run registered, and a run that resumes (after a pause, or a lost
cluster) refuses to start if one of those directories is missing. What is left is one
small file, `RETENTION_MARKER`, saying why the weights are gone. Ray only ever restores a
run's newest checkpoint, which is always among the last K.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

# All that is left of a removed checkpoint's directory.
RETENTION_MARKER = "removed_by_retention.json"

Basis = Literal["eval_loss", "train_loss"]


@dataclass(frozen=True)
class Scored:
    """A checkpoint as retention sees it: its step and the losses reported with it."""

    step: int
    eval_loss: float | None = None
    train_loss: float | None = None

    @staticmethod
    def of(step: int, metrics: dict[str, Any] | None) -> Scored:
        metrics = metrics or {}
        return Scored(step, _finite(metrics.get("eval_loss")), _finite(metrics.get("train_loss")))


@dataclass(frozen=True)
class Retention:
    kept: frozenset[int]
    removed: tuple[int, ...]
    # The best checkpoint's step and what made it the best; None when no loss was reported.
    best: int | None
    basis: Basis | None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def best_of(checkpoints: Sequence[Scored]) -> tuple[int | None, Basis | None]:
    """The best checkpoint's step: lowest eval_loss, else lowest train_loss; the earliest
    reported one on a tie."""
    for basis in ("eval_loss", "train_loss"):
        scored = [(getattr(c, basis), i) for i, c in enumerate(checkpoints)]
        candidates = [(loss, i) for loss, i in scored if loss is not None]
        if candidates:
            _, index = min(candidates)
            return checkpoints[index].step, basis
    return None, None


def plan(checkpoints: Sequence[Scored], keep_last: int, protected: Iterable[int] = ()) -> Retention:
    """What to keep of `checkpoints` (in the order they were reported, oldest first): the
    last `keep_last`, the best, and the `protected` steps (a deployed checkpoint)."""
    if keep_last < 1:
        raise ValueError("keep_last must be at least 1: a run resumes from its newest")
    best, basis = best_of(checkpoints)
    kept = {c.step for c in checkpoints[-keep_last:]} | set(protected)
    if best is not None:
        kept.add(best)
    removed = tuple(c.step for c in checkpoints if c.step not in kept)
    return Retention(frozenset(kept), removed, best, basis)


def describe(retention: Retention, keep_last: int) -> str:
    """Why a checkpoint went, in the words of the job's events."""
    text = f"the job keeps its last {keep_last} checkpoint{'s' if keep_last > 1 else ''}"
    if retention.best is not None:
        loss = "validation loss" if retention.basis == "eval_loss" else "training loss"
        text += f" and its best (step {retention.best}, by {loss})"
    return text


def release(uri: str, note: dict[str, Any]) -> None:
    """Empties a removed checkpoint's directory, leaving `RETENTION_MARKER` with `note`.

    The marker is written first: the directory goes on existing for Ray whatever happens
    halfway. Removing an already emptied directory again changes nothing."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    path = path.rstrip("/")
    if not fs.exists(path):
        return
    with fs.open(f"{path}/{RETENTION_MARKER}", "w") as f:
        f.write(json.dumps(note))
    for entry in fs.ls(path, detail=False):
        if posixpath.basename(str(entry).rstrip("/")) != RETENTION_MARKER:
            fs.rm(entry, recursive=True)


def release_all(removals: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """`release` each; a failure is logged, not raised: the rows are gone already (the
    listing is right), and a directory left full only costs its disk."""
    for uri, note in removals:
        try:
            release(uri, note)
        except Exception:
            log.warning("could not remove the checkpoint at %s", uri, exc_info=True)

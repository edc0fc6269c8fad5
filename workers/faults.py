"""Test-only fault injection: a training worker that dies right after a checkpoint.

Tests of recovery ship a `FaultInjection` with the trainer (`build_trainer(fault=...)`);
the recipe calls `crash_if_due` after each checkpoint. Jobs never set one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FaultInjection:
    """Worker `rank` exits abruptly right after the checkpoint at `after_step`.

    `marker` is a file created before exiting so the fault happens once, not again on
    every restart.
    """

    rank: int
    after_step: int
    marker: str


def crash_if_due(fault: FaultInjection | None, rank: int, step: int) -> None:
    """Kills this worker process if `fault` is for it at `step` and has not happened yet."""
    if fault is None or fault.rank != rank or fault.after_step != step:
        return
    if os.path.exists(fault.marker):
        return
    import ray.train

    # ray.train.report hands the checkpoint to the controller asynchronously; wait
    # until it is registered so "after the checkpoint" means the run can resume there.
    ray.train.get_all_reported_checkpoints()
    Path(fault.marker).write_text(str(step))
    os._exit(1)  # a hard crash: no exception, no cleanup, like a killed process

"""A Ray Train run's events from its controller: checkpoints and lost workers.

The recipe's workers report their own ``metrics`` and ``eval`` events; what only the
controller knows (a checkpoint was registered, a worker failed and the run restarts) is
reported by `TrainEventsCallback`.
"""

from __future__ import annotations

from typing import Any

from ray.train import Checkpoint
from ray.train.v2.api.callback import UserCallback

from workers.records import CheckpointData
from workers.report import Reporter
from workers.storage import checkpoint_uri


class TrainEventsCallback(UserCallback):
    """Runs on the Ray Train controller: checkpoint and worker-failure events."""

    def __init__(self, reporter: Reporter, storage_uri: str, checkpoints: bool = True) -> None:
        self.reporter = reporter
        self.storage_uri = storage_uri
        self.checkpoints = checkpoints

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None
    ) -> None:
        if checkpoint is None or not self.checkpoints:
            return
        rank0 = metrics[0] if metrics else {}
        self.reporter.checkpoint(
            CheckpointData(
                step=int(rank0.get("step") or 0),
                checkpoint_uri=checkpoint_uri(self.storage_uri, checkpoint.path),
                metrics=rank0,
            )
        )

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for rank, error in sorted(worker_exceptions.items()):
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self.reporter.message(
                f"training worker {rank} failed ({type(error).__name__}: {first_line[:300]}); "
                "Ray Train restarts the workers from the last checkpoint if retries remain",
                level="warn",
                rank=rank,
            )

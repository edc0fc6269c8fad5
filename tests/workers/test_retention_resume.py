"""A run resumes after retention emptied its older checkpoints: Ray Train's snapshot of the
run still lists them, and a new run of the job (after a pause, or a lost cluster) checks
that every listed directory exists before it restores the newest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback

from service.jobs.retention import RETENTION_MARKER, release
from tests.fixtures.ray_cluster import RayCluster
from tests.workers.factories import make_spec, prompt_completion_rows, write_jsonl
from tests.workers.training import fit
from workers.checkpoints import PAUSED_METRIC
from workers.storage import pause_flag_uri


class PauseAfterCheckpoints(UserCallback):
    """Asks the run to pause once it has reported `after` checkpoints."""

    def __init__(self, flag: Path, after: int) -> None:
        self.flag = flag
        self.after = after
        self.seen = 0

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        self.seen += checkpoint is not None
        if self.seen >= self.after and not self.flag.exists():
            self.flag.parent.mkdir(parents=True, exist_ok=True)
            self.flag.write_text("pause")


def test_a_run_resumes_from_its_newest_checkpoint_after_retention_emptied_the_rest(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        tmp_path,
        training_file_uri=write_jsonl(tmp_path / "train.jsonl", prompt_completion_rows(64, 0)),
        training={
            "n_epochs": 2,
            "batch_size": 8,
            "learning_rate": 1e-2,
            "max_length": 64,
            "checkpoint_every_steps": 2,
            "num_checkpoints_to_keep": 1,
        },
    )
    flag = Path(pause_flag_uri(spec.output_uri))
    first = fit(spec, models_dir, tmp_path / "1.jsonl", callbacks=[PauseAfterCheckpoints(flag, 2)])
    assert first.result.metrics.get(PAUSED_METRIC) == 1.0
    paused_at = int(first.result.metrics["step"])
    reported = [e.data["checkpoint_uri"] for e in first.of_type("checkpoint")]
    assert len(reported) >= 3, "two checkpoints, then the paused one"
    # What the control plane does with K=1 (the best is the newest or not: no matter here).
    older = reported[:-1]
    for uri in older:
        release(uri, {"reason": "test"})

    flag.unlink()
    second = fit(spec, models_dir, tmp_path / "2.jsonl")
    messages = second.of_type("message")
    resumed = [e.data["resumed_from_step"] for e in messages if "resumed_from_step" in e.data]
    assert resumed == [paused_at]
    assert second.result.metrics["step"] == second.plan.total_steps
    for uri in older:
        emptied = Path(uri.removeprefix("file://"))
        assert [p.name for p in emptied.iterdir()] == [RETENTION_MARKER]

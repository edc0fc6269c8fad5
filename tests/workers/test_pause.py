"""A paused run stops at a step boundary with a checkpoint, and the next run of the job
goes on from it as if it had never stopped: the same loss at every step, even after
retention emptied its older checkpoints (which Ray Train's snapshot of the run still lists)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback

from service.jobs.retention import RETENTION_MARKER, release
from tests.fixtures.ray_cluster import RayCluster
from tests.workers.factories import make_spec
from tests.workers.training import fit
from workers.checkpoints import PAUSED_METRIC
from workers.storage import pause_flag_uri


class PauseAfterFirstCheckpoint(UserCallback):
    """Asks the run to pause (as the control plane does: the flag file) once it has
    reported its first checkpoint, so the pause lands mid-epoch at some later step."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        if checkpoint is not None and not self.flag.exists():
            self.flag.parent.mkdir(parents=True, exist_ok=True)
            self.flag.write_text("pause")


def test_a_paused_and_resumed_run_has_the_losses_of_one_that_never_stopped(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    training = {
        "n_epochs": 3,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "max_length": 64,
        "checkpoint_every_steps": 3,
    }
    # Dropout on: the resumed run must draw the same masks, so the generators' states
    # travel with the checkpoint.
    adapter = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.2}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = make_spec(tmp_path / "a", adapter=adapter, training=training)
    whole = fit(straight, models_dir, tmp_path / "a.jsonl")
    total = whole.plan.total_steps
    expected = dict(whole.series("metrics", "train_loss"))
    assert sorted(expected) == list(range(1, total + 1))

    paused_spec = make_spec(tmp_path / "b", adapter=adapter, training=training)
    flag = Path(pause_flag_uri(paused_spec.output_uri))
    first = fit(
        paused_spec, models_dir, tmp_path / "b1.jsonl", callbacks=[PauseAfterFirstCheckpoint(flag)]
    )
    assert first.result.metrics.get(PAUSED_METRIC) == 1.0
    paused_at = int(first.result.metrics["step"])
    assert 3 <= paused_at < total, paused_at
    assert Path(first.result.checkpoint.path).name == f"checkpoint-{paused_at:07d}"
    before = dict(first.series("metrics", "train_loss"))
    assert sorted(before) == list(range(1, paused_at + 1))

    # Retention empties the older checkpoints (the control plane's, here with K=1). Ray
    # Train's snapshot of the run still lists them: the resumed run must not need them.
    reported = [e.data["checkpoint_uri"] for e in first.of_type("checkpoint")]
    assert len(reported) >= 2, "a checkpoint before the pause, and the pause's own"
    for uri in reported[:-1]:
        release(uri, {"reason": "retention"})

    flag.unlink()  # resume: the control plane takes the request back, then starts a run
    second = fit(paused_spec, models_dir, tmp_path / "b2.jsonl")
    assert PAUSED_METRIC not in second.result.metrics
    resumed = [
        e.data["resumed_from_step"]
        for e in second.of_type("message")
        if "resumed_from_step" in e.data
    ]
    assert resumed == [paused_at]
    after = dict(second.series("metrics", "train_loss"))
    assert sorted(after) == list(range(paused_at + 1, total + 1))
    for step, loss in {**before, **after}.items():
        assert abs(loss - expected[step]) <= 1e-4, (step, loss, expected[step])
    for uri in reported[:-1]:
        emptied = Path(uri.removeprefix("file://"))
        assert [p.name for p in emptied.iterdir()] == [RETENTION_MARKER]

"""Checkpoint retention's policy (which steps stay) and how a removed checkpoint is left."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from service.jobs.retention import RETENTION_MARKER, Scored, plan, release


def _train(*losses: float) -> list[Scored]:
    return [Scored(step=i + 1, train_loss=loss) for i, loss in enumerate(losses)]


def test_without_validation_the_last_k_and_the_lowest_training_loss_stay() -> None:
    kept = plan(_train(5.0, 4.0, 1.0, 3.0, 3.5, 2.5), keep_last=2)
    assert kept.kept == {3, 5, 6}
    assert kept.removed == (1, 2, 4)
    assert (kept.best, kept.basis) == (3, "train_loss")


def test_validation_loss_decides_the_best_when_there_is_one() -> None:
    checkpoints = [
        Scored(10, eval_loss=None, train_loss=0.1),  # before the first evaluation
        Scored(20, eval_loss=2.0, train_loss=0.9),
        Scored(30, eval_loss=1.0, train_loss=0.5),
        # The same evaluation's loss again (taken before the next one): the earlier wins.
        Scored(40, eval_loss=1.0, train_loss=0.6),
        Scored(50, eval_loss=1.5, train_loss=0.2),
    ]
    kept = plan(checkpoints, keep_last=1)
    assert (kept.best, kept.basis) == (30, "eval_loss")
    assert kept.kept == {30, 50}
    assert kept.removed == (10, 20, 40)


def test_a_best_among_the_last_k_keeps_exactly_k() -> None:
    kept = plan(_train(3.0, 2.0, 1.0), keep_last=2)
    assert kept.kept == {2, 3} and kept.best == 3 and kept.removed == (1,)


def test_nothing_goes_while_there_are_k_or_fewer() -> None:
    assert plan(_train(1.0, 2.0), keep_last=2).removed == ()
    assert plan([], keep_last=3).kept == frozenset()


def test_losses_that_are_not_numbers_are_not_candidates() -> None:
    checkpoints = [
        Scored.of(1, {"train_loss": math.nan}),
        Scored.of(2, {"train_loss": 4.0, "eval_loss": math.inf}),
        Scored.of(3, {"train_loss": True}),
        Scored.of(4, {"train_loss": 5.0}),
    ]
    kept = plan(checkpoints, keep_last=1)
    assert (kept.best, kept.basis) == (2, "train_loss")
    assert kept.kept == {2, 4}
    assert plan([Scored(1), Scored(2)], keep_last=1).best is None


def test_protected_steps_stay() -> None:
    kept = plan(_train(5.0, 4.0, 1.0, 3.0), keep_last=1, protected=[1])
    assert kept.kept == {1, 3, 4} and kept.removed == (2,)


def test_last_means_last_reported_not_highest_step() -> None:
    # A run that started over (its Ray state lost) reports low steps again after high ones.
    checkpoints = [Scored(56, train_loss=1.0), Scored(64, train_loss=2.0)]
    checkpoints += [Scored(8, train_loss=3.0), Scored(16, train_loss=2.5)]
    kept = plan(checkpoints, keep_last=2)
    assert kept.kept == {8, 16, 56} and kept.removed == (64,)


def test_keep_last_must_keep_the_newest() -> None:
    with pytest.raises(ValueError):
        plan(_train(1.0), keep_last=0)


def test_release_empties_the_directory_and_leaves_the_marker(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint-0000004"
    (checkpoint / "model").mkdir(parents=True)
    (checkpoint / "model" / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (checkpoint / "optimizer.safetensors").write_bytes(b"y" * 100)
    release(checkpoint.as_uri(), {"step": 4, "reason": "test"})
    assert [p.name for p in checkpoint.iterdir()] == [RETENTION_MARKER]
    assert json.loads((checkpoint / RETENTION_MARKER).read_text())["step"] == 4
    release(checkpoint.as_uri(), {"step": 4, "reason": "again"})  # idempotent
    assert [p.name for p in checkpoint.iterdir()] == [RETENTION_MARKER]
    release((tmp_path / "missing").as_uri(), {})  # nothing there: nothing to do
    assert not (tmp_path / "missing").exists()

"""workers.trackers against real trackers (an `mlflow server`, W&B offline), without Ray:
what a run logs, that a restarted worker finds its run again, and that a tracker that is
down costs one warning event and nothing else."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from service.stack import free_port
from tests.workers.tracking_servers import (
    MlflowServer,
    mlflow_server,
    params_of,
    tags_of,
    wandb_run,
)
from workers.report import EventRecord, JsonLinesSink, Reporter
from workers.spec import JobSpec
from workers.trackers import (
    TRACKER_SECRETS_FILE,
    Tracking,
    open_tracker,
    secret_names,
    take_secrets,
)

__all__ = ["mlflow_server"]

SECRETS = {"MLFLOW_TRACKING_TOKEN": "tok-7f3a9c0e", "WANDB_API_KEY": "a" * 40}


def _spec(job_id: str, integrations: list[dict[str, Any]], tmp_path: Path) -> JobSpec:
    return JobSpec.model_validate(
        {
            "job_id": job_id,
            "tenant_id": "tenant-1",
            "base_model": {"name": "tiny-gpt2", "source": "tiny:gpt2"},
            "data_format": "text",
            "training_file_uri": "file:///nowhere.jsonl",
            "output_uri": f"file://{tmp_path}/out",
            "seed": 3,
            "training": {"n_epochs": 2, "batch_size": 4, "learning_rate": 0.01},
            "integrations": integrations,
            "fine_tuned_model": f"ft:tiny-gpt2:team::{job_id}",
        }
    )


def _reporter(job_id: str) -> tuple[Reporter, io.StringIO]:
    out = io.StringIO()
    return Reporter(job_id, "tenant-1", JsonLinesSink(stream=out)), out


def _events(out: io.StringIO) -> list[EventRecord]:
    return [EventRecord.model_validate_json(line) for line in out.getvalue().splitlines()]


def _train(tracking: Tracking, spec: JobSpec, reporter: Reporter, steps: int = 4) -> None:
    """What the recipe's rank 0 does: start, a metrics report per step, an evaluation at
    the end, the model reference."""
    tracker = open_tracker(tracking, spec, reporter, rank=0)
    for step in range(1, steps + 1):
        tracker.log(
            {"step": step, "train_loss": 2.0 / step, "learning_rate": 0.01, "total_steps": 4},
            step,
        )
    tracker.log({"step": steps, "eval_loss": 0.75}, steps)
    tracker.end("finished", {"fine_tuned_model": spec.fine_tuned_model or "", "artifact_uri": "x"})


def test_mlflow_run_has_params_metric_history_and_the_model(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    spec = _spec(
        "ftjob-mlflow1",
        [{"type": "mlflow", "mlflow": {"tracking_uri": mlflow_server.url, "experiment": "unit"}}],
        tmp_path,
    )
    reporter, out = _reporter(spec.job_id)
    _train(Tracking(tuple(spec.integrations), SECRETS), spec, reporter)

    (run,) = mlflow_server.runs("unit")
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["run_name"] == "ftjob-mlflow1"
    params = params_of(run)
    assert params["learning_rate"] == "0.01"
    assert params["n_epochs"] == "2" and params["batch_size"] == "4"
    assert params["adapter"] == "lora" and params["method"] == "supervised"
    tags = tags_of(run)
    assert tags["fine_tuned_model"] == "ft:tiny-gpt2:team::ftjob-mlflow1"
    assert tags["tuneplane.job_id"] == "ftjob-mlflow1"
    history = mlflow_server.history(run["info"]["run_id"], "train_loss")
    assert history == [(1, 2.0), (2, 1.0), (3, 2.0 / 3), (4, 0.5)]
    assert mlflow_server.history(run["info"]["run_id"], "eval_loss") == [(4, 0.75)]
    # Bookkeeping is not a curve.
    assert mlflow_server.history(run["info"]["run_id"], "total_steps") == []
    assert _events(out) == []
    assert not any(v in json.dumps(run) for v in SECRETS.values())


def test_a_restarted_worker_logs_to_the_same_mlflow_run(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    settings = {"tracking_uri": mlflow_server.url, "experiment": "restart"}
    spec = _spec("ftjob-mlflow2", [{"type": "mlflow", "mlflow": settings}], tmp_path)
    tracking = Tracking(tuple(spec.integrations), {})
    reporter, _ = _reporter(spec.job_id)
    first = open_tracker(tracking, spec, reporter, rank=0)
    first.log({"train_loss": 1.0}, 1)
    first.end("paused")
    second = open_tracker(tracking, spec, reporter, rank=0)
    second.log({"train_loss": 0.5}, 2)
    second.end("finished", {})

    (run,) = mlflow_server.runs("restart")
    assert run["info"]["status"] == "FINISHED"
    assert mlflow_server.history(run["info"]["run_id"], "train_loss") == [(1, 1.0), (2, 0.5)]


def test_trials_are_runs_of_their_own_and_other_ranks_log_nothing(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    settings = {"tracking_uri": mlflow_server.url, "experiment": "trials", "name": "sweep"}
    spec = _spec("ftjob-mlflow3", [{"type": "mlflow", "mlflow": settings}], tmp_path)
    tracking = Tracking(tuple(spec.integrations), {})
    reporter, _ = _reporter(spec.job_id)
    for trial in ("t_00000", "t_00001"):
        tracker = open_tracker(tracking.for_trial(trial), spec, reporter, rank=0)
        tracker.log({"train_loss": 1.0}, 1)
        tracker.end("finished", {})
    idle = open_tracker(tracking, spec, reporter, rank=1)
    assert idle.trackers == []

    runs = mlflow_server.runs("trials")
    assert sorted(r["info"]["run_name"] for r in runs) == ["sweep-t_00000", "sweep-t_00001"]
    assert sorted(params_of(r)["trial_id"] for r in runs) == ["t_00000", "t_00001"]


def test_wandb_offline_run_files_hold_config_history_and_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    spec = _spec(
        "ftjob-wandb1",
        [{"type": "wandb", "wandb": {"project": "tuneplane-tests", "tags": ["unit", "v2"]}}],
        tmp_path,
    )
    reporter, out = _reporter(spec.job_id)
    _train(Tracking(tuple(spec.integrations), SECRETS), spec, reporter)

    run = wandb_run(tmp_path / "wandb", "ftjob-wandb1")
    assert run.project == "tuneplane-tests"
    assert run.tags == ["unit", "v2"]
    assert run.config["learning_rate"] == 0.01 and run.config["n_epochs"] == 2
    assert run.config["adapter"] == "lora"
    steps = [(row["_step"], row["train_loss"]) for row in run.history if "train_loss" in row]
    assert steps == [(1, 2.0), (2, 1.0), (3, 2.0 / 3), (4, 0.5)]
    assert any(row.get("eval_loss") == 0.75 for row in run.history)
    assert run.summary["fine_tuned_model"] == "ft:tiny-gpt2:team::ftjob-wandb1"
    assert _events(out) == []
    for path in run.directory.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert not any(v.encode() in text for v in SECRETS.values()), path


def test_a_tracker_that_is_down_is_one_warning_and_training_goes_on(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    spec = _spec("ftjob-down1", [{"type": "mlflow", "mlflow": {"tracking_uri": closed}}], tmp_path)
    reporter, out = _reporter(spec.job_id)
    _train(Tracking(tuple(spec.integrations), SECRETS), spec, reporter, steps=6)

    events = _events(out)
    assert len(events) == 1, events
    (warning,) = events
    assert warning.level == "warn" and warning.type == "message"
    assert warning.message.startswith(f"MLflow tracking at {closed} unavailable: ")
    assert warning.data["tracker"] == "mlflow"
    assert not any(v in warning.model_dump_json() for v in SECRETS.values())


def test_secrets_beside_the_spec_are_read_once_and_never_in_a_repr(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / TRACKER_SECRETS_FILE).write_text(json.dumps(SECRETS))
    assert take_secrets(f"file://{out}") == SECRETS
    assert not (out / TRACKER_SECRETS_FILE).exists()
    assert take_secrets(f"file://{out}") == {}
    tracking = Tracking((), SECRETS)
    assert not any(v in repr(tracking) for v in SECRETS.values())


def test_each_tracker_asks_for_its_conventional_secrets(tmp_path: Path) -> None:
    spec = _spec(
        "ftjob-names",
        [
            {"type": "wandb", "wandb": {"project": "p"}},
            {"type": "mlflow", "mlflow": {"tracking_uri": "http://127.0.0.1:1"}},
            {"type": "mlflow", "mlflow": {"tracking_uri": "http://127.0.0.1:2"}},
        ],
        tmp_path,
    )
    assert secret_names(spec.integrations) == [
        "WANDB_API_KEY",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    ]


def test_a_tracker_failing_mid_run_is_one_warning_and_then_left_alone(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("workers.trackers.MLFLOW_FLUSH_S", 0.0)  # every step is a request
    settings = {"tracking_uri": mlflow_server.url, "experiment": "midrun"}
    spec = _spec("ftjob-midrun", [{"type": "mlflow", "mlflow": settings}], tmp_path)
    reporter, out = _reporter(spec.job_id)
    tracker = open_tracker(Tracking(tuple(spec.integrations), {}), spec, reporter, rank=0)
    tracker.log({"train_loss": 1.0}, 1)
    (run,) = mlflow_server.runs("midrun")
    # The server now refuses the run's writes (a deleted run takes none).
    mlflow_server.api("POST", "runs/delete", json={"run_id": run["info"]["run_id"]})
    for step in range(2, 6):
        tracker.log({"train_loss": 1.0 / step}, step)
    tracker.end("finished", {"fine_tuned_model": "m"})

    events = _events(out)
    assert len(events) == 1, events
    assert events[0].level == "warn"
    assert events[0].message.startswith(f"MLflow tracking at {mlflow_server.url} unavailable: ")
    assert mlflow_server.history(run["info"]["run_id"], "train_loss") == [(1, 1.0)]

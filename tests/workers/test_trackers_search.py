"""A hyperparameter search with an MLflow integration on the session's Ray cluster: each
trial is a tracker run of its own, named by the trial, with the trial's hyperparameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.ray_cluster import RayCluster
from tests.workers.test_tune import search_spec, trials_of
from tests.workers.tracking_servers import MlflowServer, mlflow_server, params_of, tags_of
from workers.data import load_job_data, plan_steps
from workers.report import JsonLinesSink, Reporter, read_json_lines
from workers.spec import MlflowIntegration
from workers.trackers import Tracking

__all__ = ["mlflow_server"]

pytestmark = [pytest.mark.ray, pytest.mark.long]


def test_each_trial_of_a_search_is_a_run_named_by_it(
    models_dir: Path, tmp_path: Path, ray_cluster: RayCluster, mlflow_server: MlflowServer
) -> None:
    from workers.tune import run_search

    spec = search_spec(
        tmp_path,
        "ftjob-tracked-grid",
        {
            "space": {"learning_rate": {"type": "grid", "values": [1e-3, 3e-2]}},
            "algorithm": "grid",
            "num_trials": 1,
            "scheduler": "fifo",
            "max_concurrent_trials": 2,
        },
        n_epochs=1,
    )
    settings = {"tracking_uri": mlflow_server.url, "experiment": "search"}
    integration = MlflowIntegration.model_validate({"type": "mlflow", "mlflow": settings})
    spec = spec.model_copy(update={"integrations": [integration]})
    events_path = tmp_path / "events.jsonl"
    reporter = Reporter(spec.job_id, spec.tenant_id, JsonLinesSink(path=str(events_path)))
    data = load_job_data(spec, str(models_dir))
    tracking = Tracking(tuple(spec.integrations), {})
    outcome = run_search(
        spec, data, plan_steps(spec, data.train_examples), reporter, str(models_dir), tracking
    )
    assert outcome is not None and outcome.search is not None and outcome.search.trials == 2
    events = read_json_lines(str(events_path))
    assert not [e for e in events if e.level == "warn" and "unavailable" in e.message]

    trials = trials_of(events)
    runs = mlflow_server.runs("search")
    assert sorted(r["info"]["run_name"] for r in runs) == sorted(
        f"{spec.job_id}-{trial}" for trial in trials
    )
    for run in runs:
        trial = tags_of(run)["tuneplane.trial_id"]
        assert run["info"]["status"] == "FINISHED"
        assert (
            float(params_of(run)["learning_rate"]) == trials[trial][-1]["params"]["learning_rate"]
        )
        history = mlflow_server.history(run["info"]["run_id"], "train_loss")
        assert [s for s, _ in history] == list(range(1, len(history) + 1)) and history

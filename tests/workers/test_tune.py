"""Hyperparameter search on a real Ray cluster: trials, ASHA, the winner, cancel."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.ray_cluster import RayCluster
from tests.fixtures.redis_server import RedisServer
from tests.workers.factories import make_spec, prompt_completion_rows, write_jsonl
from tests.workers.test_run_job import job_events, run_job, run_log, start_run_job
from workers.data import load_job_data, plan_steps
from workers.records import ResultData
from workers.report import EventRecord, JsonLinesSink, Reporter, read_json_lines
from workers.spec import DpoConfig, JobSpec
from workers.tune import SEARCH_ACTORS

pytestmark = [pytest.mark.ray, pytest.mark.long]


def search_spec(tmp: Path, job_id: str, search: dict[str, Any], **training: Any) -> JobSpec:
    return make_spec(
        tmp,
        job_id=job_id,
        output_uri=f"file://{tmp}/output",
        validation_file_uri=write_jsonl(tmp / "val.jsonl", prompt_completion_rows(24, 1)),
        training={
            "n_epochs": 2,
            "batch_size": 16,
            "learning_rate": 3e-2,
            "max_length": 64,
            "checkpoint_every_steps": 2,
            "eval_every_steps": 2,
            **training,
        },
        search=search,
    )


def trials_of(events: list[EventRecord]) -> dict[str, list[dict[str, Any]]]:
    trials: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event.type == "trial":
            trials.setdefault(event.data["trial_id"], []).append(event.data)
    return trials


def test_asha_search_stops_poor_trials_and_publishes_the_best(
    ray_cluster: RayCluster, redis_server: RedisServer, models_dir: Path, tmp_path: Path
) -> None:
    spec = search_spec(
        tmp_path,
        "ftjob-asha",
        {
            "space": {"learning_rate": {"type": "choice", "values": [1e-5, 1e-4, 3e-2, 1e-1]}},
            "algorithm": "random",
            "num_trials": 4,
            "scheduler": "asha",
            "max_concurrent_trials": 2,
        },
    )
    done = run_job(spec, tmp_path, ray_cluster, redis_server.url, models_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = job_events(redis_server.url, spec.job_id)
    statuses = [e.data["status"] for e in events if e.type == "status"]
    assert statuses == ["preparing", "training", "saving", "succeeded"]

    trials = trials_of(events)
    assert len(trials) == 4
    final = {tid: history[-1] for tid, history in trials.items()}
    assert all(history[0]["status"] == "running" for history in trials.values())
    ends = sorted(d["status"] for d in final.values())
    assert "early_stopped" in ends, ends
    assert set(ends) <= {"terminated", "early_stopped"}
    for data in final.values():
        stopped = data["status"] == "early_stopped"
        assert (data["metrics"]["step"] < 12) == stopped
        assert data["checkpoint_uri"].startswith(f"file://{tmp_path}/output/trials/")

    # Per-step events are tagged with their trial.
    steps = [e.data for e in events if e.type == "metrics"]
    assert steps and {m["trial_id"] for m in steps} == set(trials)
    assert not any(e.type == "checkpoint" for e in events), "trial checkpoints stay in trials"

    [result] = [e.data for e in events if e.type == "result"]
    best = result["best_trial"]
    winner = final[best["trial_id"]]
    assert winner["status"] == "terminated"
    assert best["metric"] == "eval_loss"
    assert best["value"] == winner["metrics"]["eval_loss"] == result["metrics"]["eval_loss"]
    assert best["params"] == winner["params"]
    assert best["value"] == min(d["metrics"]["eval_loss"] for d in final.values())
    # The trial's own last eval event of step 12 is the value it was chosen on.
    last_eval = [
        e.data for e in events if e.type == "eval" and e.data["trial_id"] == best["trial_id"]
    ][-1]
    assert (last_eval["step"], last_eval["eval_loss"]) == (12, best["value"])
    assert result["checkpoint_uri"] == winner["checkpoint_uri"]
    assert result["trained_tokens"] == sum(d["metrics"]["trained_tokens"] for d in final.values())

    artifact = tmp_path / "output" / "model"
    assert result["artifact_uri"] == f"file://{artifact}"
    manifest = json.loads((artifact / "tuneplane.json").read_text())
    assert manifest["metrics"]["trial_id"] == best["trial_id"]
    assert manifest["metrics"]["params"] == best["params"]
    checkpoint = Path(result["checkpoint_uri"].removeprefix("file://"))
    published = (artifact / "adapter_model.safetensors").read_bytes()
    assert published == (checkpoint / "model" / "adapter_model.safetensors").read_bytes()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artifact)
    base = AutoModelForCausalLM.from_pretrained(models_dir / "tiny-gpt2")
    model = PeftModel.from_pretrained(base, str(artifact)).eval()
    assert model(**tokenizer("red ->", return_tensors="pt")).logits.shape[-1] == len(tokenizer)


def run_search_here(spec: JobSpec, models_dir: Path, tmp: Path) -> tuple[ResultData, Any]:
    from workers.tune import run_search

    events_path = tmp / "events.jsonl"
    reporter = Reporter(spec.job_id, spec.tenant_id, JsonLinesSink(path=str(events_path)))
    data = load_job_data(spec, str(models_dir))
    outcome = run_search(
        spec, data, plan_steps(spec, data.train_examples), reporter, str(models_dir)
    )
    assert outcome is not None, "nothing asked the search to pause"
    return outcome, read_json_lines(str(events_path))


def test_a_grid_gives_every_combination_once(
    models_dir: Path, tmp_path: Path, ray_cluster: RayCluster
) -> None:
    spec = search_spec(
        tmp_path,
        "ftjob-grid",
        {
            "space": {
                "learning_rate": {"type": "grid", "values": [1e-3, 3e-2]},
                "lora_r": {"type": "grid", "values": [2, 4]},
            },
            "algorithm": "grid",
            "num_trials": 1,
            "scheduler": "fifo",
            "max_concurrent_trials": 2,
        },
        n_epochs=1,
        checkpoint_every_steps=None,
        eval_every_steps=None,
    )
    outcome, events = run_search_here(spec, models_dir, tmp_path)
    trials = trials_of(events)
    params = sorted(
        (h[-1]["params"]["learning_rate"], h[-1]["params"]["lora_r"]) for h in trials.values()
    )
    assert params == [(1e-3, 2), (1e-3, 4), (3e-2, 2), (3e-2, 4)]
    assert all(h[-1]["status"] == "terminated" for h in trials.values())
    # Each trial really trained with its rank: its adapter config says so.
    for tid, history in trials.items():
        checkpoint = Path(history[-1]["checkpoint_uri"].removeprefix("file://"))
        config = json.loads((checkpoint / "model" / "adapter_config.json").read_text())
        assert config["r"] == history[-1]["params"]["lora_r"], tid
    assert outcome.search is not None and outcome.search.trials == 4


def test_an_optuna_search_runs(models_dir: Path, tmp_path: Path, ray_cluster: RayCluster) -> None:
    spec = search_spec(
        tmp_path,
        "ftjob-optuna",
        {
            "space": {
                "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
                "lora_dropout": {"type": "uniform", "low": 0.0, "high": 0.2},
            },
            "algorithm": "optuna",
            "num_trials": 2,
            "scheduler": "fifo",
            "max_concurrent_trials": 2,
        },
        n_epochs=1,
        # Reports (checkpoints) before the first evaluation: each must still carry the
        # search's metric, which Tune checks and Optuna reads from every result.
        checkpoint_every_steps=1,
        eval_every_steps=4,
    )
    outcome, events = run_search_here(spec, models_dir, tmp_path)
    trials = trials_of(events)
    assert len(trials) == 2
    for history in trials.values():
        p = history[-1]["params"]
        assert 1e-4 <= p["learning_rate"] <= 1e-1 and 0.0 <= p["lora_dropout"] <= 0.2
    assert outcome.best_trial is not None and outcome.best_trial.trial_id in trials
    assert (tmp_path / "output" / "model" / "adapter_model.safetensors").is_file()


def search_actors(ignore: frozenset[str] = frozenset()) -> list[str]:
    """Class names of the live search actors on the cluster, but those in `ignore` (ids)."""
    return [name for actor_id, name in _search_actor_ids() if actor_id not in ignore]


def _search_actor_ids() -> list[tuple[str, str]]:
    from ray.util.state import list_actors

    return [
        (str(a.actor_id), str(a.class_name))
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
        if a.class_name in SEARCH_ACTORS
    ]


def test_cancelling_a_search_stops_every_trial(
    ray_cluster: RayCluster, redis_server: RedisServer, models_dir: Path, tmp_path: Path
) -> None:
    spec = search_spec(
        tmp_path,
        "ftjob-tune-stop",
        {
            "space": {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-1}},
            "num_trials": 4,
            "scheduler": "fifo",
            "max_concurrent_trials": 2,
        },
        n_epochs=200,
    )
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.model_dump_json())
    # The session's cluster is shared: whatever an earlier test left is not this search's.
    before = frozenset(actor_id for actor_id, _ in _search_actor_ids())
    process = start_run_job(spec.job_id, spec_path, redis_server.url, models_dir, ray_cluster.env)
    try:
        deadline = time.monotonic() + 180
        while not any(e.type == "metrics" for e in job_events(redis_server.url, spec.job_id)):
            assert process.poll() is None and time.monotonic() < deadline, "training never began"
            time.sleep(0.2)
        running = search_actors(ignore=before)
        # The names are right: a trial, its Train controller and its workers are alive now.
        assert {"ImplicitFunc", "TrainController", "RayTrainWorker"} <= set(running), running
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            process.kill()
    events = job_events(redis_server.url, spec.job_id)
    last = events[-1]
    assert (last.type, last.level) == ("status", "error")
    assert last.data == {"status": "failed", "code": "stopped"}
    assert not any(e.type == "result" for e in events)

    # Nothing of the search is left on the cluster. Ray reaps a dead driver's actors
    # asynchronously, so under load the last ones may take a moment to go.
    deadline = time.monotonic() + 60
    while (alive := search_actors(ignore=before)) and time.monotonic() < deadline:
        time.sleep(1)
    assert alive == [], "trials (or their trainers) still alive after the stop"
    # Tune saved the experiment's state, so the search could be resumed.
    assert list((tmp_path / "output" / "ray" / "tune").glob("experiment_state-*.json"))


def test_a_paused_search_resumes_its_trials_where_they_stopped(
    ray_cluster: RayCluster, redis_server: RedisServer, models_dir: Path, tmp_path: Path
) -> None:
    spec = search_spec(
        tmp_path,
        "ftjob-tune-pause",
        {
            "space": {"learning_rate": {"type": "grid", "values": [1e-2, 3e-2]}},
            "algorithm": "grid",
            "scheduler": "fifo",
            "max_concurrent_trials": 2,
        },
        n_epochs=4,
        batch_size=8,
    )
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.model_dump_json())
    before = frozenset(actor_id for actor_id, _ in _search_actor_ids())

    def run(until: Any = None) -> int:
        process = start_run_job(
            spec.job_id, spec_path, redis_server.url, models_dir, ray_cluster.env
        )
        try:
            if until is not None:
                deadline = time.monotonic() + 180
                while not until():
                    assert process.poll() is None and time.monotonic() < deadline
                    time.sleep(0.2)
                flag.parent.mkdir(parents=True, exist_ok=True)
                flag.write_text("pause")  # what the control plane's pause writes
            return process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()

    flag = tmp_path / "output" / "control" / "pause"

    def training() -> bool:
        events = job_events(redis_server.url, spec.job_id)
        return any(e.type == "metrics" and e.data["step"] >= 3 for e in events)

    assert run(until=training) == 0, run_log(spec_path, spec.job_id)
    events = job_events(redis_server.url, spec.job_id)
    last = events[-1]
    assert (last.type, last.data["status"]) == ("status", "paused"), last
    assert not any(e.type == "result" for e in events)
    deadline = time.monotonic() + 60
    while (alive := search_actors(ignore=before)) and time.monotonic() < deadline:
        time.sleep(1)
    assert alive == [], "a paused search holds nothing on the cluster"
    paused_at = {
        e.data["trial_id"]: e.data["paused_at_step"]
        for e in events
        if e.type == "message" and "paused_at_step" in e.data
    }
    started = {e.data["trial_id"] for e in events if e.type == "metrics"}
    assert set(paused_at) == started, "every running trial saved a checkpoint at its next step"

    flag.unlink()
    assert run() == 0, run_log(spec_path, spec.job_id)
    events = job_events(redis_server.url, spec.job_id)
    assert any(e.data.get("resumed_search") for e in events if e.type == "message")
    assert events[-1].data["status"] == "succeeded"
    result = next(e for e in events if e.type == "result")
    assert result.data["search"]["trials"] == 2, "no trial was started afresh"
    total = plan_steps(spec, 96).total_steps
    assert total == 48
    for trial_id, at in paused_at.items():
        steps = [
            e.data["step"]
            for e in events
            if e.type == "metrics" and e.data.get("trial_id") == trial_id
        ]
        # Each step once: the resumed trial went on from its pause, not from step 1.
        assert steps == list(range(1, total + 1)), (trial_id, at, steps)


def test_a_dpo_search_over_beta_and_learning_rate_picks_the_best_reward_accuracy(
    ray_cluster: RayCluster, redis_server: RedisServer, models_dir: Path, tmp_path: Path
) -> None:
    from tests.workers.factories import preference_rows

    spec = search_spec(
        tmp_path,
        "ftjob-dpo-search",
        {
            "space": {
                "beta": {"type": "grid", "values": [0.05, 0.5]},
                "learning_rate": {"type": "grid", "values": [1e-5, 3e-2]},
            },
            "algorithm": "grid",
            "num_trials": 1,
            "scheduler": "fifo",
            "metric": "eval_reward_accuracy",
            "mode": "max",
            "max_concurrent_trials": 2,
        },
        n_epochs=1,
        checkpoint_every_steps=None,
        eval_every_steps=None,
    )
    spec = spec.model_copy(
        update={
            "data_format": "preference",
            "method": "dpo",
            "dpo": DpoConfig(beta=0.1),
            "training_file_uri": write_jsonl(tmp_path / "pairs.jsonl", preference_rows(48, 0)),
            "validation_file_uri": write_jsonl(tmp_path / "held.jsonl", preference_rows(16, 1)),
        }
    )
    spec = JobSpec.model_validate(spec.model_dump())
    done = run_job(spec, tmp_path, ray_cluster, redis_server.url, models_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = job_events(redis_server.url, spec.job_id)
    final = {tid: history[-1] for tid, history in trials_of(events).items()}
    assert sorted((d["params"]["beta"], d["params"]["learning_rate"]) for d in final.values()) == [
        (0.05, 1e-5),
        (0.05, 3e-2),
        (0.5, 1e-5),
        (0.5, 3e-2),
    ]
    [result] = [e.data for e in events if e.type == "result"]
    best = result["best_trial"]
    assert best["metric"] == "eval_reward_accuracy"
    scores = [d["metrics"]["eval_reward_accuracy"] for d in final.values()]
    assert best["value"] == max(scores)
    assert (best["params"]["beta"], best["params"]["learning_rate"]) in {
        (d["params"]["beta"], d["params"]["learning_rate"])
        for d in final.values()
        if d["metrics"]["eval_reward_accuracy"] == best["value"]
    }
    # Each trial trained with its own hyperparameters: the fast rate moved the rewards further.
    margin = {
        (d["params"]["beta"], d["params"]["learning_rate"]): d["metrics"]["eval_reward_margin"]
        for d in final.values()
    }
    for beta in (0.05, 0.5):
        assert margin[(beta, 3e-2)] > margin[(beta, 1e-5)], margin

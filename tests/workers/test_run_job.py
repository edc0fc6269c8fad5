"""`python -m workers.run_job` end to end: a subprocess joins the session's Ray cluster
and streams its events to a real Redis server, as under the control plane."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.fixtures.ray_cluster import RayCluster
from tests.fixtures.redis_server import RedisServer
from tests.workers.factories import (
    classification_rows,
    make_spec,
    prompt_completion_rows,
    write_jsonl,
)
from workers.report import EVENTS_STREAM, EventRecord
from workers.spec import JobSpec

pytestmark = pytest.mark.ray
REPO_ROOT = Path(__file__).resolve().parents[2]


def run_job(
    spec: JobSpec, tmp: Path, cluster: RayCluster, redis_url: str, models_dir: Path
) -> subprocess.CompletedProcess[str]:
    spec_path = tmp / "spec.json"
    spec_path.write_text(spec.model_dump_json())
    command = [
        sys.executable,
        "-m",
        "workers.run_job",
        spec.job_id,
        "--spec-uri",
        f"file://{spec_path}",
        "--redis-url",
        redis_url,
        "--models-dir",
        str(models_dir),
    ]
    env = {**os.environ, **cluster.env}
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def start_run_job(
    job_id: str, spec_path: Path, redis_url: str, models_dir: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`workers.run_job` as the control plane submits it, reporting to `redis_url`."""
    command = [
        *(sys.executable, "-m", "workers.run_job", job_id),
        *("--spec-uri", str(spec_path), "--redis-url", redis_url),
        *("--models-dir", str(models_dir)),
    ]
    # Its output goes beside the spec, for whoever reads a failure.
    with (spec_path.parent / f"{job_id}.log").open("ab") as log:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def run_log(spec_path: Path, job_id: str, tail: int = 6000) -> str:
    """The end of what `start_run_job`'s processes for the job printed."""
    path = spec_path.parent / f"{job_id}.log"
    return path.read_text(errors="replace")[-tail:] if path.is_file() else ""


def job_events(redis_url: str, job_id: str) -> list[EventRecord]:
    client: Any = redis.Redis.from_url(redis_url, decode_responses=True)
    return [
        EventRecord.from_stream_fields(fields)
        for _, fields in client.xrange(EVENTS_STREAM)
        if fields["job_id"] == job_id
    ]


def test_run_job_trains_publishes_and_streams_events(
    ray_cluster: RayCluster, redis_server: RedisServer, models_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        tmp_path,
        job_id="ftjob-e2e",
        output_uri=f"file://{tmp_path}/output",
        validation_file_uri=write_jsonl(tmp_path / "val.jsonl", prompt_completion_rows(24, 1)),
        training={
            "n_epochs": 2,
            "batch_size": 16,
            "learning_rate": 3e-2,
            "max_length": 64,
            "warmup_ratio": 0.1,
            "lr_scheduler": "cosine",
            "eval_at_start": True,
        },
    )
    done = run_job(spec, tmp_path, ray_cluster, redis_server.url, models_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    events = job_events(redis_server.url, "ftjob-e2e")
    assert {e.tenant_id for e in events} == {"tenant-test"}
    statuses = [e.data["status"] for e in events if e.type == "status"]
    assert statuses == ["preparing", "training", "saving", "succeeded"]
    steps = [e.data for e in events if e.type == "metrics"]
    assert [m["step"] for m in steps] == list(range(1, 13))  # 96 examples, 16 a step, 2 epochs
    for metrics in steps:
        assert metrics["train_loss"] > 0 and metrics["tokens_per_second"] > 0
        assert "learning_rate" in metrics
    assert steps[0]["learning_rate"] < steps[1]["learning_rate"], "warm-up"
    evals = [e.data for e in events if e.type == "eval"]
    assert [e["step"] for e in evals] == [0, 6, 12]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    checkpoints = [e.data for e in events if e.type == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [6, 12]
    last_checkpoint = checkpoints[-1]["checkpoint_uri"]
    assert last_checkpoint == f"file://{tmp_path}/output/ray/train/checkpoint-0000012"
    assert Path(
        last_checkpoint.removeprefix("file://"), "model", "adapter_model.safetensors"
    ).is_file()

    [result] = [e for e in events if e.type == "result"]
    artifact = Path(tmp_path / "output" / "model")
    assert result.data["artifact_uri"] == f"file://{artifact}"
    assert result.data["checkpoint_uri"] == last_checkpoint
    assert result.data["trained_tokens"] == steps[-1]["trained_tokens"] > 0
    assert result.data["steps"] == 12
    assert result.data["metrics"]["eval_loss"] == evals[-1]["eval_loss"]
    assert events.index(result) == len(events) - 2, "the result comes just before success"

    names = {p.name for p in artifact.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= names
    manifest = json.loads((artifact / "tuneplane.json").read_text())
    assert manifest["base_model"]["source"] == "tiny:tiny-gpt2"
    assert manifest["adapter"] == "lora"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artifact)
    base = AutoModelForCausalLM.from_pretrained(models_dir / "tiny-gpt2")
    model = PeftModel.from_pretrained(base, str(artifact)).eval()
    assert model(**tokenizer("red ->", return_tensors="pt")).logits.shape[-1] == len(tokenizer)


def test_run_job_fails_with_a_message_the_user_can_act_on(
    ray_cluster: RayCluster, redis_server: RedisServer, models_dir: Path, tmp_path: Path
) -> None:
    validation = [*classification_rows(8, 1), {"text": "a kiwi", "label": "vegetable"}]
    spec = make_spec(
        tmp_path,
        job_id="ftjob-bad-label",
        base_model={"name": "tiny-bert", "source": "tiny:tiny-bert"},
        task="sequence_classification",
        data_format="classification",
        labels=["animal", "color", "fruit", "number"],
        training_file_uri=write_jsonl(tmp_path / "train.jsonl", classification_rows(16, 0)),
        validation_file_uri=write_jsonl(tmp_path / "val.jsonl", validation),
    )
    done = run_job(spec, tmp_path, ray_cluster, redis_server.url, models_dir)
    assert done.returncode == 1

    events = job_events(redis_server.url, "ftjob-bad-label")
    last = events[-1]
    assert (last.type, last.level, last.data["status"]) == ("status", "error", "failed")
    assert last.data["code"] == "invalid_data"
    assert "label 'vegetable' in the validation file is not one of the job's labels" in (
        last.message
    )
    assert not any(e.type == "result" for e in events)


def test_a_stopped_job_reports_that_it_was_stopped(
    ray_cluster: RayCluster, redis_server: RedisServer, models_dir: Path, tmp_path: Path
) -> None:
    """Ray's stop_job (the control plane's cancel) interrupts the entrypoint with SIGINT."""
    spec = make_spec(
        tmp_path,
        job_id="ftjob-stopped",
        training={"n_epochs": 200, "batch_size": 16, "learning_rate": 1e-2, "max_length": 64},
    )
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.model_dump_json())
    process = start_run_job(spec.job_id, spec_path, redis_server.url, models_dir, ray_cluster.env)
    try:
        deadline = time.monotonic() + 120
        while not any(e.type == "metrics" for e in job_events(redis_server.url, spec.job_id)):
            assert process.poll() is None and time.monotonic() < deadline, "training never began"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
    last = job_events(redis_server.url, spec.job_id)[-1]
    assert (last.type, last.level) == ("status", "error")
    assert last.data == {"status": "failed", "code": "stopped"}

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.fixtures.redis_server import RedisServer
from workers.records import BestTrial, CheckpointData, ResultData, SearchSummary, TrialData
from workers.report import EVENTS_STREAM, EventRecord, JsonLinesSink, RedisEventSink, Reporter

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_events_go_to_the_stream_and_a_consumer_group_reads_them(
    redis_server: RedisServer,
) -> None:
    # redis-py types every reply as a union over its sync/async, bytes/str clients.
    client: Any = redis.Redis.from_url(redis_server.url, decode_responses=True)
    stream = "test:events:group"
    client.delete(stream)
    client.xgroup_create(stream, "control-plane", id="0", mkstream=True)
    reporter = Reporter("ftjob-1", "tenant-1", RedisEventSink(redis_server.url, stream=stream))
    reporter.status("training")
    reporter.metrics({"step": 1, "train_loss": 2.5, "learning_rate": 1e-3})
    reporter.failed("the validation file has a label the job does not know", code="invalid_data")

    reply = client.xreadgroup("control-plane", "c1", {stream: ">"}, count=10)
    entries = reply[0][1]
    assert [fields["type"] for _, fields in entries] == ["status", "metrics", "status"]
    assert {fields["job_id"] for _, fields in entries} == {"ftjob-1"}
    assert {fields["tenant_id"] for _, fields in entries} == {"tenant-1"}
    records = [EventRecord.from_stream_fields(fields) for _, fields in entries]
    assert records[1].data == {"step": 1, "train_loss": 2.5, "learning_rate": 1e-3}
    assert records[2].level == "error"
    assert records[2].data == {"status": "failed", "code": "invalid_data"}
    assert client.xack(stream, "control-plane", *[entry_id for entry_id, _ in entries]) == 3


def test_the_default_stream_is_shared_by_all_jobs(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    before = client.xlen(EVENTS_STREAM)
    sink = RedisEventSink(redis_server.url)
    Reporter("ftjob-a", "t", sink).message("hello")
    Reporter("ftjob-b", "t", sink).message("hello")
    assert client.xlen(EVENTS_STREAM) == before + 2


def test_a_lost_sink_does_not_stop_training_events_but_fails_the_result() -> None:
    reporter = Reporter("ftjob-1", "t", RedisEventSink("redis://127.0.0.1:1/0"), strict_wait_s=0)
    record = reporter.metrics({"step": 1})  # logged and dropped
    assert record.type == "metrics"
    with pytest.raises(redis.ConnectionError):
        # The final result must not be lost silently.
        reporter.result(
            ResultData(artifact_uri="x", adapter="lora", trained_tokens=0, steps=0, metrics={})
        )


def test_json_lines_sink_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    reporter = Reporter("ftjob-1", "t", JsonLinesSink(path=str(path)))
    reporter.eval({"step": 3, "eval_loss": 1.25})
    from workers.report import read_json_lines

    [record] = read_json_lines(str(path))
    assert (record.type, record.data["eval_loss"]) == ("eval", 1.25)


def test_typed_records_keep_the_events_wire_shape(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    reporter = Reporter("ftjob-1", "t", JsonLinesSink(path=str(path)))
    reporter.status("training")
    reporter.failed("stopped", code="stopped")
    reporter.failed("bad data", code="invalid_data", error_type="DataError", retryable=False)
    reporter.checkpoint(CheckpointData(step=2, checkpoint_uri="file:///c", metrics={"step": 2}))
    plain = ResultData(artifact_uri="m", adapter="full", trained_tokens=5, steps=2, metrics={})
    reporter.result(plain)
    search = plain.model_copy(
        update={
            "best_trial": BestTrial(trial_id="a", metric="eval_loss", value=1.5, params={}),
            "search": SearchSummary(
                trials=2, failed_trials=0, early_stopped_trials=1, total_steps=3
            ),
        }
    )
    reporter.result(search)
    reporter.trial(TrialData(trial_id="a", status="error"))
    data = [(r.type, r.level, r.data) for r in read_json_lines_of(path)]
    assert data[0] == ("status", "info", {"status": "training"})
    assert data[1] == ("status", "error", {"status": "failed", "code": "stopped"})
    assert data[2][2] == {
        "status": "failed",
        "code": "invalid_data",
        "error_type": "DataError",
        "retryable": False,
    }
    assert data[3][2] == {"step": 2, "checkpoint_uri": "file:///c", "metrics": {"step": 2}}
    # A result always names its checkpoint and LoRA settings, null when there are none.
    assert data[4][2] == {
        "artifact_uri": "m",
        "adapter": "full",
        "trained_tokens": 5,
        "steps": 2,
        "metrics": {},
        "checkpoint_uri": None,
        "lora": None,
    }
    assert data[5][2]["best_trial"] == {
        "trial_id": "a",
        "metric": "eval_loss",
        "value": 1.5,
        "params": {},
    }
    assert data[5][2]["search"]["early_stopped_trials"] == 1
    assert data[6] == (
        "trial",
        "warn",
        {
            "trial_id": "a",
            "status": "error",
            "params": {},
            "metrics": {},
            "best_metric": None,
            "iterations": 0,
            "checkpoint_uri": None,
        },
    )
    # The control plane can read an event's data back, and ignores fields it does not know.
    assert TrialData.model_validate({**data[6][2], "new_field": 1}).status == "error"


def read_json_lines_of(path: Path) -> list[EventRecord]:
    from workers.report import read_json_lines

    return read_json_lines(str(path))


def test_the_contract_module_imports_neither_torch_nor_ray() -> None:
    code = (
        "import sys, workers.report; "
        "bad = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_events_sent_while_redis_is_down_arrive_in_order_once_it_is_back(
    tmp_path: Path,
) -> None:
    from tests.service.reliability.harness import RedisProcess

    server = RedisProcess(tmp_path / "redis")
    try:
        stream = "test:events:outage"
        reporter = Reporter("ftjob-1", "t", RedisEventSink(server.url, stream=stream))
        reporter.metrics({"step": 1})
        server.kill9()
        reporter.metrics({"step": 2})  # buffered: Redis is down
        reporter.metrics({"step": 3})
        server.start()
        reporter.status("succeeded")  # goes out after the buffered ones
        client: Any = redis.Redis.from_url(server.url, decode_responses=True)
        records = [EventRecord.from_stream_fields(f) for _, f in client.xrange(stream)]
        assert [(r.type, r.data.get("step")) for r in records] == [
            ("metrics", 1),
            ("metrics", 2),
            ("metrics", 3),
            ("status", None),
        ]
        client.close()
    finally:
        server.stop()

"""`tuneplane jobs create/list --metadata k=v` and the ETA that `jobs get` and `jobs follow`
show, with typer's CliRunner against a real control plane process (no Ray: the job is set
running and its steps are written as the event consumer writes them)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlmodel import Session
from typer.testing import CliRunner, Result

from service.cli import app as cli
from service.cli.follow import eta_column, finish_text
from service.common import now
from service.jobs.state import add_event, transition
from service.models.status import JobStatus
from tests.factories import jsonl, prompt_completion_records
from tests.fixtures.live_stack import LiveStack


def run(args: list[str], stack: LiveStack, tmp_path: Path, ok: bool = True) -> Result:
    env = {
        "COLUMNS": "200",
        "TUNEPLANE_URL": stack.url,
        "TUNEPLANE_API_KEY": stack.api_key,
        "TUNEPLANE_CONFIG": str(tmp_path / "no-config.toml"),
    }
    result = CliRunner().invoke(cli, args, env=env)
    if ok:
        assert result.exit_code == 0, f"{args}: {result.output}"
    return result


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def test_jobs_create_and_list_with_metadata(api_only_stack: LiveStack, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(prompt_completion_records(4)))
    file_id = as_json(run(["files", "upload", str(data), "--json"], api_only_stack, tmp_path))["id"]

    def create(*metadata: str) -> dict[str, Any]:
        args = ["jobs", "create", "--model", "tiny-gpt2", "--training-file", file_id, "--json"]
        for pair in metadata:
            args += ["--metadata", pair]
        return dict(as_json(run(args, api_only_stack, tmp_path)))

    tagged = create("cli-team=blue", "expr=a=b")  # a value may hold '='
    assert tagged["metadata"] == {"cli-team": "blue", "expr": "a=b"}
    other = create("cli-team=red")
    create()

    def listed(*metadata: str) -> list[str]:
        args = ["jobs", "list", "--json", "--limit", "100"]
        for pair in metadata:
            args += ["--metadata", pair]
        return [j["id"] for j in as_json(run(args, api_only_stack, tmp_path))]

    assert listed("cli-team=blue") == [tagged["id"]]
    assert listed("cli-team=blue", "expr=a=b") == [tagged["id"]]
    assert listed("cli-team=red") == [other["id"]]
    assert listed("cli-team=blue", "expr=nope") == []
    assert {tagged["id"], other["id"]} <= set(listed())

    shown = run(["jobs", "get", tagged["id"]], api_only_stack, tmp_path).stdout
    assert "cli-team=blue" in shown and "expr=a=b" in shown, shown
    bad = run(["jobs", "list", "--metadata", "no-equals"], api_only_stack, tmp_path, ok=False)
    assert bad.exit_code == 2 and "key=value" in bad.output


def test_jobs_get_shows_when_a_running_job_should_finish(
    api_only_stack: LiveStack, tmp_path: Path
) -> None:
    stack = api_only_stack
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(prompt_completion_records(4)))
    file_id = as_json(run(["files", "upload", str(data), "--json"], stack, tmp_path))["id"]
    args = ["jobs", "create", "--model", "tiny-gpt2", "--training-file", file_id, "--json"]
    job_id = as_json(run(args, stack, tmp_path))["id"]
    engine = create_engine(stack.database_url)
    started = now() - 20
    with Session(engine) as s:
        assert transition(s, job_id, JobStatus.RUNNING, started_at=started)
        for step in (1, 2):  # 10 s a step, 8 of 10 steps left: about 80 s from now
            data_ = {"kind": "metrics", "step": step, "train_loss": 1.0, "total_steps": 10}
            add_event(s, job_id, stack.tenant_id, f"step {step}", type_="metrics", data=data_,
                      created_at=started + 10 * step)  # fmt: skip
        s.commit()
    engine.dispose()
    shown = run(["jobs", "get", job_id], stack, tmp_path).stdout
    assert re.search(r"ETA\s+\S?\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(in 1m [0-2]\ds\)", shown), shown


def test_the_eta_as_the_cli_shows_it() -> None:
    assert finish_text(None) is None
    assert finish_text(1000 + 3725, now=1000).endswith("(in 1h 02m)")  # type: ignore[union-attr]
    assert finish_text(1000 + 75, now=1000).endswith("(in 1m 15s)")  # type: ignore[union-attr]
    assert finish_text(990, now=1000).endswith("(in 0s)")  # type: ignore[union-attr]
    assert eta_column(None) == "ETA -:--:--"
    assert eta_column(1000 + 3725, now=1000) == "ETA 1:02:05"
    assert eta_column(1000 + 9, now=1000) == "ETA 0:00:09"

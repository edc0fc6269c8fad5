"""`tuneplane secrets` and a job's integrations from the CLI, against a real control plane
process (the API alone): values go in on standard input and never come out."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from service.cli import app as cli
from tests.fixtures.live_stack import LiveStack
from tests.service.test_cli import env_for, no_config, run

__all__ = ["no_config"]

VALUE = "cli-secret-4e9d01c7aa"


def test_secrets_are_set_from_stdin_listed_by_name_and_deleted(
    api_only_stack: LiveStack, no_config: Path
) -> None:
    env = env_for(api_only_stack, no_config)
    outputs = []
    result = CliRunner().invoke(
        cli, ["secrets", "set", "WANDB_API_KEY"], input=VALUE + "\n", env={"COLUMNS": "200", **env}
    )
    assert result.exit_code == 0, result.output
    outputs.append(result.output)
    listed = run(["secrets", "list", "--json"], env=env)
    outputs.append(listed.output)
    assert [s["name"] for s in json.loads(listed.output)] == ["WANDB_API_KEY"]
    table = run(["secrets", "list"], env=env)
    outputs.append(table.output)
    assert "WANDB_API_KEY" in table.output
    outputs.append(run(["secrets", "delete", "WANDB_API_KEY"], env=env).output)
    assert json.loads(run(["secrets", "list", "--json"], env=env).output) == []
    gone = run(["secrets", "delete", "WANDB_API_KEY"], env=env, ok=False)
    assert gone.exit_code == 1
    empty = CliRunner().invoke(cli, ["secrets", "set", "X"], input="\n", env=env)
    assert empty.exit_code == 2
    for text in [*outputs, api_only_stack.log.read_text()]:
        assert VALUE not in text


def test_a_job_is_created_with_integrations_from_the_cli(
    api_only_stack: LiveStack, no_config: Path, tmp_path: Path
) -> None:
    env = env_for(api_only_stack, no_config)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(4)))
    file_id = json.loads(run(["files", "upload", str(data), "--json"], env=env).output)["id"]
    extra = {"integrations": [{"type": "wandb", "wandb": {"project": "cli-project"}}]}
    created = run(
        ["jobs", "create", "--model", "tiny-gpt2", "--training-file", file_id,
         "--extra", json.dumps(extra), "--json"],
        env=env,
    )  # fmt: skip
    assert json.loads(created.output)["status"] in ("queued", "validating_files")
    bad = {"integrations": [{"type": "wandb", "wandb": {}}]}
    refused = run(
        ["jobs", "create", "--model", "tiny-gpt2", "--training-file", file_id,
         "--extra", json.dumps(bad)],
        env=env,
        ok=False,
    )  # fmt: skip
    assert refused.exit_code == 1
    assert "integrations[0].wandb.project: Field required" in refused.output

"""The `tuneplane` CLI's API commands, run with typer's CliRunner against a real control
plane process (the API alone, and the full stack on the session's Ray cluster for
`jobs follow`)."""

from __future__ import annotations

import http.server
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine
from sqlmodel import Session
from typer.testing import CliRunner, Result

from service.cli import app as cli
from service.cli.follow import FollowState, validation_rows
from service.common import now
from service.config import Settings
from service.jobs.state import add_event
from service.models import FineTunedModel, Job, UsageRecord
from service.stack import free_port
from tests.factories import (
    ADMIN,
    TenantHandle,
    add_model,
    classification_records,
    jsonl,
    prompt_completion_records,
)
from tests.fixtures.app import ADMIN_KEY
from tests.fixtures.live_stack import LIVE_JOB_EPOCHS, LIVE_JOB_STEPS, LiveJob, LiveStack
from tests.fixtures.stack import ControlPlaneProcess, wait_for

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def no_config(tmp_path: Path) -> Path:
    """A config file path that does not exist yet: no developer's own file leaks in."""
    return tmp_path / "cli-config.toml"


def run(args: list[str], *, env: dict[str, str | None], ok: bool = True) -> Result:
    # Wide enough that tables and the progress line are never cut.
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "200", **env})
    if ok:
        assert result.exit_code == 0, f"{args}: {result.output}"
    return result


def env_for(stack: LiveStack, config: Path, key: str | None = None) -> dict[str, str | None]:
    return {
        "TUNEPLANE_URL": stack.url,
        "TUNEPLANE_API_KEY": key or stack.api_key,
        "TUNEPLANE_ADMIN_KEY": stack.admin_key,
        "TUNEPLANE_CONFIG": str(config),
    }


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def test_files_and_jobs_commands(
    api_only_stack: LiveStack, no_config: Path, tmp_path: Path
) -> None:
    env = env_for(api_only_stack, no_config)
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(prompt_completion_records(6)))
    uploaded = as_json(run(["files", "upload", str(data), "--json"], env=env))
    assert uploaded["examples"] == 6 and uploaded["format"] == "prompt_completion"
    shown = run(["files", "upload", str(data)], env=env).stdout
    assert "6 prompt_completion examples" in shown

    files = as_json(run(["files", "list", "--json"], env=env))
    assert uploaded["id"] in [f["id"] for f in files]
    assert uploaded["id"] in run(["files", "list"], env=env).stdout

    job = as_json(
        run(
            ["jobs", "create", "--model", "tiny-gpt2", "--training-file", uploaded["id"],
             "--epochs", "2", "--batch-size", "2", "--suffix", "cli", "--json"],
            env=env,
        )
    )  # fmt: skip
    assert job["status"] == "queued"
    assert job["hyperparameters"]["n_epochs"] == 2 and job["hyperparameters"]["batch_size"] == 2
    listed = as_json(run(["jobs", "list", "--json"], env=env))
    assert job["id"] in [j["id"] for j in listed]
    table = run(["jobs", "get", job["id"]], env=env).stdout
    assert job["id"] in table and "queued" in table

    cancelled = as_json(run(["jobs", "cancel", job["id"], "--json"], env=env))
    assert cancelled["status"] == "cancelled"
    events = as_json(run(["jobs", "events", job["id"], "--json"], env=env))
    assert "cancelled" in [(e.get("data") or {}).get("status") for e in events]
    # Following a job that already ended prints its outcome and exits 1 (not succeeded).
    followed = run(["jobs", "follow", job["id"]], env=env, ok=False)
    assert followed.exit_code == 1 and "cancelled" in followed.stdout

    deleted = run(["files", "delete", uploaded["id"]], env=env)
    assert "deleted" in deleted.stdout


PREFERENCE_PAIRS = [
    {
        "input": {"messages": [{"role": "user", "content": f"Name colour {i}."}]},
        "preferred_output": [{"role": "assistant", "content": f"Colour {i} is red."}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    for i in range(4)
]


def test_jobs_create_runs_dpo_on_a_fine_tuned_model_and_follow_shows_reward_accuracy(
    api_only_stack: LiveStack, no_config: Path, tmp_path: Path
) -> None:
    """SFT, then DPO on the SFT model, from the CLI; the DPO job's steps and validation
    passes (stored as the event consumer stores them) as `jobs follow` shows them."""
    stack = api_only_stack
    env = env_for(stack, no_config)
    ids = []
    for name, records in (
        ("sft.jsonl", prompt_completion_records(4)),
        ("pairs.jsonl", PREFERENCE_PAIRS),
    ):
        data = tmp_path / name
        data.write_bytes(jsonl(records))
        ids.append(as_json(run(["files", "upload", str(data), "--json"], env=env))["id"])
    sft = as_json(
        run(["jobs", "create", "--model", "tiny-gpt2", "--training-file", ids[0],
             "--lora-r", "4", "--suffix", "sft", "--json"], env=env)
    )  # fmt: skip
    assert sft["method"]["type"] == "supervised" and sft["adapter"]["r"] == 4
    # The SFT job's model, registered as a succeeded job's is.
    parent = f"ft:tiny-gpt2:{stack.tenant_name}:sft:{sft['id']}"
    engine = create_engine(stack.database_url)
    with Session(engine) as s:
        row = s.get(Job, sft["id"])
        assert row is not None
        s.add(
            FineTunedModel.of_job(row, id=parent, artifact_uri="file:///nowhere", created_at=now())
        )
        s.commit()

    job = as_json(
        run(["jobs", "create", "--model", parent, "--training-file", ids[1],
             "--validation-file", ids[1], "--method", "dpo", "--beta", "0.2", "--epochs", "1",
             "--json"], env=env)
    )  # fmt: skip
    # OpenAI's method object, with the options the command takes in its hyperparameters.
    assert job["model"] == parent
    assert job["method"]["type"] == "dpo" and "supervised" not in job["method"]
    hp = job["method"]["dpo"]["hyperparameters"]
    assert hp["beta"] == 0.2 and hp["n_epochs"] == 1
    # No --adapter: the parent's LoRA adapter (rank 4) goes on training.
    assert job["adapter"]["type"] == "lora" and job["adapter"]["r"] == 4
    shown = run(["jobs", "get", job["id"]], env=env).stdout
    assert "dpo (beta 0.2)" in shown and parent in shown, shown
    assert "supervised" in run(["jobs", "get", sft["id"]], env=env).stdout

    with Session(engine) as s:
        for step, numbers in (
            (1, {"kind": "metrics", "epoch": 1, "train_loss": 0.6931,
                 "train_reward_accuracy": 0.5, "train_reward_margin": 0.0}),
            (2, {"kind": "eval", "eval_loss": 0.5, "eval_reward_accuracy": 0.75,
                 "eval_reward_margin": 1.25, "eval_chosen_reward": 0.5}),
        ):  # fmt: skip
            add_event(s, job["id"], stack.tenant_id, f"step {step}", type_="metrics",
                      data={"step": step, **numbers})  # fmt: skip
        s.commit()
    engine.dispose()
    run(["jobs", "cancel", job["id"]], env=env)
    out = run(["jobs", "follow", job["id"]], env=env, ok=False).stdout
    assert "step 2: eval_loss 0.5000  eval_reward_accuracy 0.7500  eval_reward_margin 1.2500" in out
    # The progress bar: the DPO loss and reward accuracy, then the latest validation pass.
    bar = "loss 0.6931  reward_acc 0.5000  eval_loss 0.5000  eval_reward_acc 0.7500  eval_margin"
    assert bar in out, out
    assert re.search(r"validation reward accuracy\s+\S?\s*0\.7500 \(step 2\)", out), out
    assert re.search(r"validation reward margin\s+\S?\s*1\.2500 \(step 2\)", out), out


def test_beta_is_refused_without_the_dpo_method_before_any_request(no_config: Path) -> None:
    # Nothing listens there: a request would end in "Cannot reach".
    env: dict[str, str | None] = {
        "TUNEPLANE_URL": f"http://127.0.0.1:{free_port()}",
        "TUNEPLANE_API_KEY": "tp-unused",
        "TUNEPLANE_CONFIG": str(no_config),
    }
    base = ["jobs", "create", "--model", "tiny-gpt2", "--training-file", "file-x"]
    for method in ([], ["--method", "supervised"]):
        refused = run([*base, *method, "--beta", "0.2"], env=env, ok=False)
        assert refused.exit_code == 2, refused.output
        assert "--beta is DPO's: give it with --method dpo" in refused.output
        assert "Cannot reach" not in refused.output
    unknown = run([*base, "--method", "rlhf"], env=env, ok=False)
    assert unknown.exit_code == 2 and "rlhf" in unknown.output


def test_admin_commands_create_tenants_and_keys(api_only_stack: LiveStack, no_config: Path) -> None:
    env = env_for(api_only_stack, no_config)
    created = as_json(
        run(["admin", "tenants", "create", "cli-team", "--weight", "2", "--json"], env=env)
    )
    tenant = created["tenant"]
    assert tenant["name"] == "cli-team" and tenant["weight"] == 2
    tenant_env = env_for(api_only_stack, no_config, key=created["api_key"])
    models = as_json(run(["models", "list", "--json"], env=tenant_env))
    assert "tiny-gpt2" in [m["id"] for m in models]

    names = [t["name"] for t in as_json(run(["admin", "tenants", "list", "--json"], env=env))]
    assert {"cli-team", api_only_stack.tenant_name} <= set(names)
    updated = as_json(
        run(
            ["admin", "tenants", "update", tenant["id"], "--max-running-jobs", "1", "--json"],
            env=env,
        )
    )
    assert updated["quotas"]["max_running_jobs"] == 1

    key = as_json(run(["admin", "keys", "create", tenant["id"], "--name", "ci", "--json"], env=env))
    listed = as_json(run(["admin", "keys", "list", tenant["id"], "--json"], env=env))
    assert key["id"] in [k["id"] for k in listed]
    run(["admin", "keys", "revoke", tenant["id"], key["id"]], env=env)
    refused = run(
        ["models", "list"], env=env_for(api_only_stack, no_config, key=key["key"]), ok=False
    )
    assert refused.exit_code == 1
    assert "Error 401" in refused.output

    # A tenant key is not an admin key.
    as_tenant = {**env, "TUNEPLANE_ADMIN_KEY": created["api_key"]}
    denied = run(["admin", "tenants", "list"], env=as_tenant, ok=False)
    assert denied.exit_code == 1


def test_usage_commands_and_the_token_budget(api_only_stack: LiveStack, no_config: Path) -> None:
    env = env_for(api_only_stack, no_config)
    created = as_json(run(["admin", "tenants", "create", "cli-usage", "--json"], env=env))
    tenant = created["tenant"]
    tenant_env = env_for(api_only_stack, no_config, key=created["api_key"])
    engine = create_engine(api_only_stack.database_url)
    with Session(engine) as s:
        for i, (model, tokens) in enumerate([("m1", 40), ("m1", 2), ("m2", 7)]):
            s.add(
                UsageRecord(
                    id=f"usage-cli-{i}",
                    tenant_id=tenant["id"],
                    kind="inference",
                    model=model,
                    requests=1,
                    prompt_tokens=tokens,
                    created_at=now(),
                )
            )
        s.commit()
    engine.dispose()
    days = as_json(run(["usage", "--group-by", "model", "--json"], env=tenant_env))
    assert len(days) == 7
    today = {r["model"]: r["input_tokens"] for r in days[-1]["results"]}
    assert today == {"m1": 42, "m2": 7}
    shown = run(["usage", "--days", "1", "--group-by", "model"], env=tenant_env).output
    assert re.search(r"m1 .*42 ", shown) and re.search(r"m2 .*7 ", shown), shown
    everyone = as_json(run(["usage", "--admin", "--group-by", "tenant_id", "--json"], env=env))
    mine = [r for r in everyone[-1]["results"] if r["tenant_id"] == tenant["id"]]
    assert [r["input_tokens"] for r in mine] == [49]

    updated = run(
        ["admin", "tenants", "update", tenant["id"], "--monthly-token-budget", "49", "--json"],
        env=env,
    )
    assert as_json(updated)["quotas"]["monthly_token_budget"] == 49
    # No file is needed to see it: the budget is checked before the job's files.
    refused = run(
        ["jobs", "create", "--model", "tiny-gpt2", "--training-file", "file-x"],
        env=tenant_env,
        ok=False,
    )
    assert refused.exit_code == 1
    assert "Error 429" in refused.output and "monthly_token_budget=49" in refused.output


def test_login_saves_a_config_file_that_env_and_flags_override(
    api_only_stack: LiveStack, no_config: Path
) -> None:
    bare: dict[str, str | None] = {
        "TUNEPLANE_URL": None,
        "TUNEPLANE_API_KEY": None,
        "TUNEPLANE_ADMIN_KEY": None,
        "TUNEPLANE_CONFIG": str(no_config),
    }
    missing = run(["jobs", "list"], env=bare, ok=False)
    assert missing.exit_code == 2 and "No API key" in missing.output

    wrong = run(["login", "--url", api_only_stack.url, "--api-key", "tp-wrong"], env=bare, ok=False)
    assert wrong.exit_code == 1 and not no_config.exists()

    run(["login", "--url", api_only_stack.url, "--api-key", api_only_stack.api_key], env=bare)
    assert stat.S_IMODE(no_config.stat().st_mode) == 0o600
    # Signed in as that tenant: the same answer as with its key in the environment.
    from_file = as_json(run(["files", "list", "--json"], env=bare))
    from_env = as_json(run(["files", "list", "--json"], env=env_for(api_only_stack, no_config)))
    assert from_file == from_env

    # A second login adds the admin key and keeps the tenant key.
    run(["login", "--url", api_only_stack.url, "--admin-key", api_only_stack.admin_key], env=bare)
    assert api_only_stack.tenant_name in run(["admin", "tenants", "list"], env=bare).stdout
    assert as_json(run(["files", "list", "--json"], env=bare)) == from_env

    # The environment beats the file, and a flag beats the environment.
    unreachable = "http://127.0.0.1:9"
    away = run(["jobs", "list"], env={**bare, "TUNEPLANE_URL": unreachable}, ok=False)
    assert away.exit_code == 2 and "Cannot reach" in away.output
    run(["--url", api_only_stack.url, "jobs", "list"], env={**bare, "TUNEPLANE_URL": unreachable})


def test_errors_carry_the_api_message(api_only_stack: LiveStack, no_config: Path) -> None:
    env = env_for(api_only_stack, no_config)
    missing = run(["jobs", "get", "ftjob-nope"], env=env, ok=False)
    assert missing.exit_code == 1
    assert "Error 404" in missing.output and "ftjob-nope" in missing.output
    bad = run(
        ["jobs", "create", "--model", "no-such-model", "--training-file", "file-x"],
        env=env,
        ok=False,
    )
    assert bad.exit_code == 1 and "no-such-model" in bad.output


def test_deployments_commands(api_only_stack: LiveStack, no_config: Path, tmp_path: Path) -> None:
    env = env_for(api_only_stack, no_config)
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(prompt_completion_records(4)))
    file_id = as_json(run(["files", "upload", str(data), "--json"], env=env))["id"]
    job = as_json(
        run(
            ["jobs", "create", "--model", "tiny-gpt2", "--training-file", file_id, "--json"],
            env=env,
        )
    )
    # This stack has no Ray to train on: the model row is what a finished job would leave.
    model_id = f"ft:tiny-gpt2:{api_only_stack.tenant_name}:dep:{job['id']}"
    engine = create_engine(api_only_stack.database_url)
    tenant = TenantHandle(api_only_stack.tenant_id, api_only_stack.tenant_name, "")
    add_model(engine, tenant, job["id"], model_id)
    engine.dispose()

    created = as_json(
        run(
            ["deployments", "create", "--model", model_id, "--min-replicas", "0",
             "--max-replicas", "2", "--target-ongoing-requests", "4", "--json"],
            env=env,
        )
    )  # fmt: skip
    assert created["id"].startswith("dep-") and created["model"] == model_id
    assert (created["min_replicas"], created["max_replicas"]) == (0, 2)
    assert created["target_ongoing_requests"] == 4
    listed = as_json(run(["deployments", "list", "--json"], env=env))
    assert [d["id"] for d in listed] == [created["id"]]
    assert created["id"] in run(["deployments", "list"], env=env).stdout
    updated = as_json(
        run(["deployments", "update", created["id"], "--max-replicas", "3", "--json"], env=env)
    )
    assert updated["max_replicas"] == 3 and updated["min_replicas"] == 0
    assert updated["engine"] == "auto"
    hf = as_json(run(["deployments", "update", created["id"], "--engine", "hf", "--json"], env=env))
    assert hf["engine"] == "hf" and hf["max_replicas"] == 3
    got = as_json(run(["deployments", "get", created["id"], "--json"], env=env))
    assert got["max_replicas"] == 3
    nothing = run(["deployments", "update", created["id"]], env=env, ok=False)
    assert nothing.exit_code == 2
    twice = run(["deployments", "create", "--model", model_id], env=env, ok=False)
    assert twice.exit_code == 1 and "already" in twice.output
    run(["deployments", "delete", created["id"]], env=env)
    assert as_json(run(["deployments", "list", "--json"], env=env)) == []
    run(["jobs", "cancel", job["id"]], env=env)


@pytest.mark.ray
def test_jobs_follow_shows_progress_until_the_job_ends(live_job: LiveJob, no_config: Path) -> None:
    env = env_for(live_job.stack, no_config)
    # What the API says of the job while it is followed: (status, estimated_finish, when).
    seen: list[tuple[str, Any, float]] = []
    stop = threading.Event()

    def watch() -> None:
        with live_job.stack.client() as c:
            while not stop.is_set():
                job = c.get(f"/v1/fine_tuning/jobs/{live_job.job_id}").json()
                seen.append((job["status"], job["estimated_finish"], time.time()))
                stop.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run(["jobs", "follow", live_job.job_id], env=env)
    finally:
        stop.set()
        watcher.join(timeout=10)
    out = result.stdout
    if seen and seen[0][0] in ("queued", "running"):  # not already run by another test
        # Once its steps had a measured time, the running job had an estimated finish:
        # soon, never in the past; and none once it ended.
        estimates = [(eta, at) for status, eta, at in seen if status == "running" and eta]
        assert estimates, seen
        assert all(at - 5 <= eta <= at + 300 for eta, at in estimates), estimates
    with live_job.stack.client() as c:
        assert c.get(f"/v1/fine_tuning/jobs/{live_job.job_id}").json()["estimated_finish"] is None
    # The final progress line: every step done, the last epoch, a loss and the ETA column.
    assert f"{LIVE_JOB_STEPS}/{LIVE_JOB_STEPS}" in out, out
    assert f"epoch {LIVE_JOB_EPOCHS}/{LIVE_JOB_EPOCHS}" in out, out
    assert "loss " in out and "eval_loss " in out and "ETA" in out, out
    # A line per validation pass (every 2 steps), no accuracy for a language model.
    passes = re.findall(r"step (\d+): eval_loss \d+\.\d{4}\n", out)
    assert len(passes) >= LIVE_JOB_STEPS // 2, out
    assert "eval_acc" not in out, out
    # Then the outcome, with the final validation loss.
    assert "succeeded" in out, out
    assert re.search(r"validation loss\s+\S?\s*\d+\.\d{4}", out), out
    assert f"ft:tiny-gpt2:{live_job.stack.tenant_name}:live:{live_job.job_id}" in out, out
    assert live_job.status() == "succeeded"


def test_jobs_follow_shows_validation_loss_and_accuracy(
    api_only_stack: LiveStack, no_config: Path, tmp_path: Path
) -> None:
    """A classification job's validation passes (stored as the event consumer stores them)
    show as lines, in the progress bar and in the final summary."""
    stack = api_only_stack
    env = env_for(stack, no_config)
    ids = []
    for name, n in (("ct.jsonl", 8), ("cv.jsonl", 4)):
        data = tmp_path / name
        data.write_bytes(jsonl(classification_records(n)))
        ids.append(as_json(run(["files", "upload", str(data), "--json"], env=env))["id"])
    job = as_json(
        run(["jobs", "create", "--model", "tiny-bert", "--training-file", ids[0],
             "--validation-file", ids[1], "--epochs", "1", "--json"], env=env)
    )  # fmt: skip
    engine = create_engine(stack.database_url)
    with Session(engine) as s:
        for step, numbers in (
            (1, {"kind": "metrics", "epoch": 1, "train_loss": 0.75}),
            (2, {"kind": "eval", "eval_loss": 0.6875, "eval_accuracy": 0.5}),
            (2, {"kind": "metrics", "epoch": 1, "train_loss": 0.5}),
            (2, {"kind": "eval", "eval_loss": 0.4375, "eval_accuracy": 0.75}),
        ):
            add_event(s, job["id"], stack.tenant_id, f"step {step}", type_="metrics",
                      data={"step": step, **numbers})  # fmt: skip
        s.commit()
    engine.dispose()
    run(["jobs", "cancel", job["id"]], env=env)
    out = run(["jobs", "follow", job["id"]], env=env, ok=False).stdout
    assert "step 2: eval_loss 0.6875  eval_accuracy 0.5000" in out, out
    assert "step 2: eval_loss 0.4375  eval_accuracy 0.7500" in out, out
    assert "loss 0.5000  eval_loss 0.4375  eval_acc 0.7500" in out, out  # the progress bar
    assert re.search(r"validation loss\s+\S?\s*0\.4375 \(step 2\)", out), out
    assert re.search(r"validation accuracy\s+\S?\s*0\.7500 \(step 2\)", out), out
    assert "cancelled" in out


def test_follow_summary_prefers_the_final_validation_metrics() -> None:
    seen = FollowState()
    seen.see({"data": {"kind": "eval", "step": 4, "eval_loss": 0.5}}, search=False)
    assert validation_rows({}, seen) == [("validation loss", "0.5000 (step 4)")]
    # The finished run's metrics (the `succeeded` event's) win over the last pass seen...
    done = {"status": "succeeded", "metrics": {"eval_loss": 0.25, "eval_accuracy": 1}}
    seen.see({"data": done}, search=False)
    assert validation_rows({}, seen) == [
        ("validation loss", "0.2500"),
        ("validation accuracy", "1.0000"),
    ]
    # ...and the job's own result, when its JSON has one, wins over both.
    job = {"result": {"metrics": {"eval_loss": 0.125}}}
    assert validation_rows(job, seen) == [("validation loss", "0.1250")]
    assert validation_rows({}, None) == []
    # A search's trials report their own passes: printed, not taken as the job's.
    line = FollowState().see(
        {"data": {"kind": "eval", "step": 2, "eval_loss": 0.5, "trial_id": "t1"}}, search=True
    )
    assert line == "trial t1 step 2: eval_loss 0.5000"


def test_follow_rides_out_a_control_plane_restart(tmp_path: Path, no_config: Path) -> None:
    """`jobs follow` (a real process) keeps following while the API is down and comes back."""
    settings = Settings(data_dir=tmp_path / "data", admin_key=ADMIN_KEY)
    port = free_port()
    first = ControlPlaneProcess(settings, port, tmp_path / "first.log")
    second: ControlPlaneProcess | None = None
    follower: subprocess.Popen[str] | None = None
    try:
        with httpx.Client(base_url=first.url, timeout=30) as http:
            made = http.post("/v1/admin/tenants", json={"name": "restart"}, headers=ADMIN).json()
            tenant = {"Authorization": f"Bearer {made['api_key']}"}
            files = {"file": ("t.jsonl", jsonl(prompt_completion_records(4)), "application/jsonl")}
            file_id = http.post(
                "/v1/files", files=files, data={"purpose": "fine-tune"}, headers=tenant
            ).json()["id"]
            body = {"model": "tiny-gpt2", "training_file": file_id}
            job_id = http.post("/v1/fine_tuning/jobs", json=body, headers=tenant).json()["id"]
        env = {**os.environ, "TUNEPLANE_URL": first.url, "TUNEPLANE_API_KEY": made["api_key"],
               "TUNEPLANE_CONFIG": str(no_config), "COLUMNS": "200"}  # fmt: skip
        follower = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "jobs", "follow", job_id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(lambda: _access_log(tmp_path / "first.log", job_id), 30, "a poll")
        first.kill9()
        # What a load balancer answers while no replica is up: 503s, until the follower has
        # retried through a few of them; then the control plane is back on the same port.
        with _Unavailable(port) as lb:
            wait_for(
                lambda: lb.hits >= 3 or follower.poll() is not None, 60, "retries through 503s"
            )
            assert follower.poll() is None, f"the follower gave up: {follower.communicate()[0]}"
        second = ControlPlaneProcess(settings, port, tmp_path / "second.log")
        wait_for(lambda: _access_log(tmp_path / "second.log", job_id), 60, "a poll")
        with httpx.Client(base_url=second.url, timeout=30) as http:
            assert http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant).is_success
        out, _ = follower.communicate(timeout=60)
        # It saw the job end (cancelled: exit 1), not a lost connection (exit 2).
        assert follower.returncode == 1, out
        assert "cancelled" in out and "Cannot reach" not in out
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        for proc in (first, second):
            if proc is not None:
                proc.stop()


class _Unavailable:
    """Answers 503 to everything on `port` (as a load balancer with no backend does)."""

    def __init__(self, port: int) -> None:
        outer = self
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(503)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Unavailable:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _access_log(path: Path, job_id: str) -> str:
    """The access lines of `path` that name the job, joined (empty while there are none)."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(x for x in lines if '"tuneplane.access"' in x and job_id in x)


def test_following_a_job_stops_when_it_pauses() -> None:
    from service.cli.follow import until_ended

    polls = iter([{"status": "running"}, {"status": "paused"}, {"status": "queued"}])
    started = time.monotonic()
    assert until_ended(lambda: next(polls), timeout_s=60)["status"] == "paused"
    assert time.monotonic() - started < 5, "it did not wait for the job to end"

"""`tuneplane webhooks`: against a real control plane process, delivering to a real local
receiver."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
from typer.testing import CliRunner, Result

from service.cli import app as cli
from service.config import Settings
from service.stack import free_port
from tests.fixtures.app import ADMIN_KEY
from tests.fixtures.stack import ControlPlaneProcess, wait_for
from tests.service.reliability.harness import make_tenant, submit
from tests.service.webhook_receiver import Receiver


def run(args: list[str], env: dict[str, str | None], ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "200", **env})
    if ok:
        assert result.exit_code == 0, f"{args}: {result.output}"
    return result


def test_webhooks_commands(tmp_path: Path, receiver: Receiver) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_poll_interval_s=0.1,
    )
    plane = ControlPlaneProcess(settings, free_port(), tmp_path / "cp.log")
    try:
        http = httpx.Client(base_url=plane.url, timeout=30)
        t = make_tenant(http, "cli-hooks")
        env: dict[str, str | None] = {
            "TUNEPLANE_URL": plane.url,
            "TUNEPLANE_API_KEY": t.key,
            "TUNEPLANE_CONFIG": str(tmp_path / "none.toml"),
        }
        out = run(["webhooks", "create", "--url", receiver.url, "--name", "ci"], env)
        assert "signing secret (shown once): whsec_" in out.stdout
        created = json.loads(
            run(["webhooks", "create", "--url", receiver.url, "--event",
                 "fine_tuning.job.cancelled", "--json"], env).stdout
        )  # fmt: skip
        assert created["event_types"] == ["fine_tuning.job.cancelled"]
        listed: list[dict[str, Any]] = json.loads(run(["webhooks", "list", "--json"], env).stdout)
        assert len(listed) == 2 and all("signing_secret" not in e for e in listed)
        assert "ci" in run(["webhooks", "list"], env).stdout
        assert created["id"] in run(["webhooks", "get", created["id"]], env).stdout

        refused = run(["webhooks", "create", "--url", "http://169.254.169.254/"], env, ok=False)
        assert refused.exit_code == 1 and "non-public" in refused.output

        job_id = submit(http, t)
        r = http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=t.headers)
        assert r.status_code == 200, r.text
        receiver.wait_delivered(1)

        def delivered() -> Any:
            rows = json.loads(run(["webhooks", "deliveries", created["id"], "--json"], env).stdout)
            return rows if rows and rows[0]["status"] == "delivered" else None

        [row] = wait_for(delivered, 30, "the delivery to be recorded", 0.2)
        assert row["event_type"] == "fine_tuning.job.cancelled" and row["attempts"] == 1
        assert "delivered" in run(["webhooks", "deliveries", created["id"]], env).stdout

        run(["webhooks", "delete", created["id"]], env)
        # OpenAI's own client manages endpoints here as at OpenAI.
        oa = openai.OpenAI(base_url=f"{plane.url}/v1", api_key=t.key)
        made = oa.webhooks.create(
            name="from-openai", url=receiver.url, event_types=["fine_tuning.job.succeeded"]
        )
        assert made.signing_secret.startswith("whsec_") and made.name == "from-openai"
        assert oa.webhooks.retrieve(made.id).url == receiver.url
        assert made.id in [e.id for e in oa.webhooks.list()]
        assert oa.webhooks.delete(made.id).deleted
        gone = run(["webhooks", "get", created["id"]], env, ok=False)
        assert gone.exit_code == 1
    finally:
        plane.stop()

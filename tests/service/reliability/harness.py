"""What the fault tests drive: the API over HTTP, a Redis they may kill, Ray nodes they may
kill, and the evidence they read back (every event of a job, Ray's view of each attempt)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from service.ray_backend import RayJobsBackend, submission_id
from service.stack import ChildProcess, free_port
from tests.factories import (
    ADMIN,
    TenantHandle,
    jsonl,
    prompt_completion_records,
    tiny_tokenizer,
    tokens_in,
)
from tests.fixtures.redis_server import _die_with_parent, redis_server_binary

TERMINAL = ("succeeded", "failed", "cancelled")


class RedisProcess:
    """A redis-server of the test's own (the session's is shared and must not be killed),
    restartable on the same port. With `durable` it writes every command to its AOF before
    answering, so a SIGKILL loses nothing; `wipe()` then throws its data away."""

    def __init__(self, workdir: Path, durable: bool = True) -> None:
        self.workdir = workdir
        self.durable = durable
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else []
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--save", "", *persistence]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def wipe(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def kill9(child: ChildProcess) -> None:
    """SIGKILL a Ray node's whole process group and any process that left it (no graceful
    `ray stop`): a machine that died."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.proc.pid, signal.SIGKILL)
    child.proc.wait()
    if child.marker:
        for p in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, OSError):
                if any(child.marker in part for part in p.info["cmdline"] or []):
                    p.kill()


def make_tenant(http: httpx.Client, name: str) -> TenantHandle:
    r = http.post("/v1/admin/tenants", json={"name": name}, headers=ADMIN)
    assert r.status_code == 200, r.text
    created = r.json()
    return TenantHandle(created["tenant"]["id"], name, created["api_key"])


def submit(http: httpx.Client, t: TenantHandle, examples: int = 16, **hyperparameters: Any) -> str:
    up = http.post(
        "/v1/files",
        files={"file": ("t.jsonl", jsonl(prompt_completion_records(examples)), "text/plain")},
        data={"purpose": "fine-tune"},
        headers=t.headers,
    )
    assert up.status_code == 200, up.text
    hp = {"n_epochs": 1, "batch_size": 4, **hyperparameters}
    body = {"model": "tiny-gpt2", "training_file": up.json()["id"], "hyperparameters": hp}
    r = http.post("/v1/fine_tuning/jobs", json=body, headers=t.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def assert_trained_once(
    http: httpx.Client, t: TenantHandle, job_id: str, models_dir: Path, examples: int, epochs: int
) -> None:
    """However many runs the job took, its usage is one record of the tokens one run over
    its data trains on (`submit`'s data)."""
    expected = tokens_in(tiny_tokenizer(models_dir), prompt_completion_records(examples)) * epochs
    assert job(http, t, job_id)["trained_tokens"] == expected
    r = http.get("/v1/usage", params={"group_by": "job_id", "limit": 1}, headers=t.headers)
    rows = [row for row in r.json()["data"][-1]["results"] if row["job_id"] == job_id]
    assert [(row["trained_tokens"], row["jobs"]) for row in rows] == [(expected, 1)]


def job(http: httpx.Client, t: TenantHandle, job_id: str) -> dict[str, Any]:
    r = http.get(f"/v1/fine_tuning/jobs/{job_id}", headers=t.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def status(http: httpx.Client, t: TenantHandle, job_id: str) -> str:
    return str(job(http, t, job_id)["status"])


def events(http: httpx.Client, t: TenantHandle, job_id: str) -> list[dict[str, Any]]:
    """Every event of the job, oldest first (the API pages newest first)."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        r = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params, headers=t.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["data"]
        if not page["has_more"]:
            return list(reversed(out))
        after = page["data"][-1]["id"]


def messages(evs: list[dict[str, Any]]) -> list[str]:
    return [str(e["message"]) for e in evs]


def transitions(evs: list[dict[str, Any]], status: str) -> list[dict[str, Any]]:
    """The control plane's own events of changes to `status`: messages whose data names the
    status (a worker's reports carry their `kind` besides; "status" for its run status)."""
    return [
        e
        for e in evs
        if e["type"] == "message" and e["data"].get("status") == status and "kind" not in e["data"]
    ]


def starts(evs: list[dict[str, Any]]) -> list[int]:
    """The attempt number of each start the control plane recorded."""
    return [int(e["data"]["attempt"]) for e in transitions(evs, "running")]


def train_steps(evs: list[dict[str, Any]]) -> list[int]:
    return [
        int(e["data"]["step"])
        for e in evs
        if e["type"] == "metrics" and (e.get("data") or {}).get("kind") == "metrics"
    ]


def ray_states(address: str, job_id: str, attempts: int) -> list[str]:
    """Ray's state of each submission id the job could have had, attempt 1..attempts, once
    none is still running (a driver may still be exiting just after it reported)."""
    from tests.fixtures.stack import wait_for

    backend = RayJobsBackend(address)

    def settled() -> list[str] | None:
        found = [str(backend.state(submission_id(job_id, n))) for n in range(1, attempts + 1)]
        return None if {"PENDING", "RUNNING"} & set(found) else found

    return list(wait_for(settled, 60, "Ray's jobs to end"))


def wait_terminal(http: httpx.Client, t: TenantHandle, jobs: list[str], timeout_s: float) -> None:
    from tests.fixtures.stack import wait_for

    wait_for(
        lambda: all(status(http, t, j) in TERMINAL for j in jobs), timeout_s, "the jobs to end", 1.0
    )

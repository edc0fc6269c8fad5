"""The control plane's inference proxy overhead, without Ray.

    .venv/bin/python bench/proxy_overhead.py [--requests 400] [--rounds 3] [--profile FILE]

Starts Redis (the rate limiter's), a stub of Serve's HTTP proxy (a pure ASGI app under
uvicorn on 127.0.0.1 answering every `POST /<app>/v1/completions` with a canned
completion, as a replica does) and the control plane under uvicorn as its own process, its
serving manager pointed at the stub (`serve_url`) with a Serve backend that reports the
stub's application running. One tenant, one fine-tuned model registered as a job's result.

Then sends the same `POST /v1/completions`, one at a time, through the control plane (with
the tenant's key) and straight to the stub (with the multiplexed model id Serve would get),
alternating blocks of 10 so drift in the machine's load hits both alike, and prints each
round's p50 both ways and their difference: the control plane's added latency, what
bench/serve.py measures against a real Serve. `--profile FILE` runs the control plane
under py-spy and writes its collapsed stacks (all threads) to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
)

import httpx  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from starlette.types import Receive, Scope, Send  # noqa: E402

from service.config import Settings, get_settings  # noqa: E402
from service.ray_backend import ServeAppStatus  # noqa: E402
from service.stack import free_port, start_redis  # noqa: E402
from workers.spec import BATCH_SIZE_HEADER  # noqa: E402

ADMIN_KEY = "bench-admin-key"
APPS_ENV = "TUNEPLANE_BENCH_STUB_APPS"
MODEL = "tiny-gpt2"
SOURCE = "tiny:tiny-gpt2"
BLOCK = 10
RATE = 10_000_000
# What a replica answers: a short greedy completion with its usage.
ANSWER = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [{"index": 0, "text": " red green blue red green", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13},
    }
).encode()


# -- the stub of Serve's proxy (runs in its own uvicorn) ---------------------------------


async def upstream_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve's proxy and a replica, minus the model: read the body, answer the completion."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    ok = scope["method"] == "POST" and scope["path"].endswith("/v1/completions")
    body = ANSWER if ok else b'{"error": "not found"}'
    await send(
        {
            "type": "http.response.start",
            "status": 200 if ok else 404,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (BATCH_SIZE_HEADER.encode(), b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- the control plane with a Serve backend that reports the stub's apps running ---------


class StubServe:
    def __init__(self, apps: list[str]) -> None:
        self.apps = apps

    def deploy_serve(self, config: dict[str, Any]) -> None:
        pass

    def serve_status(self) -> dict[str, ServeAppStatus]:
        return {app: ServeAppStatus("RUNNING", "", 1, 1) for app in self.apps}


def control_plane_app() -> FastAPI:
    """`uvicorn --factory bench.proxy_overhead:control_plane_app` (settings from the env)."""
    from service.main import create_app

    apps = os.environ.get(APPS_ENV, "").split(",")
    return create_app(get_settings(), serve_backend=StubServe(apps))


# -- processes ---------------------------------------------------------------------------


def _env(settings: Settings, apps: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"TUNEPLANE_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env[APPS_ENV] = ",".join(apps)
    return env


@contextmanager
def uvicorn(
    factory: str, env: dict[str, str], log: Path, profile: Path | None = None
) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "--factory", factory,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    if profile is not None:
        spy = str(Path(sys.executable).parent / "py-spy")
        args = [spy, "record", "--threads", "--format", "raw", "--rate", "500",
                "--output", str(profile), "--", *args]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{url}/readyz", timeout=2)
                    break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{factory} did not start; see {log}")
                time.sleep(0.2)
            yield url
        finally:
            # py-spy writes its stacks on an interrupt, as on Ctrl-C.
            proc.send_signal(signal.SIGINT if profile is not None else signal.SIGTERM)
            proc.wait(timeout=60)


def rows(tenant_id: str) -> tuple[Any, Any]:
    """A fine-tuned model (and its job), as the event consumer writes them when a job
    succeeds."""
    from service.common import new_id, now
    from service.models import FineTunedModel, Job
    from service.models.status import JobStatus

    job_id, t = new_id("ftjob"), now()
    job = Job(
        id=job_id,
        tenant_id=tenant_id,
        status=JobStatus.SUCCEEDED,
        model=MODEL,
        task="causal_lm",
        training_file="file-bench",
        seed=0,
        spec={"base_model": {"name": MODEL, "source": SOURCE}, "task": "causal_lm"},
        created_at=t,
        updated_at=t,
        finished_at=t,
    )
    model = FineTunedModel(
        id=f"ft:{MODEL}:bench:a0:{job_id}",
        tenant_id=tenant_id,
        job_id=job_id,
        base_model=MODEL,
        task="causal_lm",
        adapter_type="lora",
        artifact_uri="file:///bench/adapter0/model",
        created_at=t,
    )
    return job, model


def register(settings: Settings, tenant_id: str) -> tuple[str, str]:
    """The tenant's model in the database: its id and its multiplexed id."""
    from sqlmodel import Session

    from service.db import make_engine
    from service.deployments.serving import route_of

    job, model = rows(tenant_id)
    model_id, multiplexed = model.id, route_of(model, job)[0].multiplexed_id
    engine = make_engine(settings.database_url)
    with Session(engine) as s:
        s.add(job)
        s.flush()
        s.add(model)
        s.commit()
    engine.dispose()
    return model_id, multiplexed


# -- the measure -------------------------------------------------------------------------


def measure(
    client: httpx.Client,
    through: tuple[str, dict[str, str]],
    direct: tuple[str, dict[str, str]],
    body: dict[str, Any],
    requests: int,
) -> tuple[list[float], list[float]]:
    """Latencies of one-at-a-time requests both ways, alternating blocks of `BLOCK`."""
    times: tuple[list[float], list[float]] = ([], [])
    for block in range(max(2, requests // BLOCK)):
        url, headers = (through, direct)[block % 2]
        for _ in range(BLOCK):
            started = time.perf_counter()
            r = client.post(url, json=body, headers=headers)
            elapsed = time.perf_counter() - started
            if r.status_code != 200:
                raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:500]}")
            times[block % 2].append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="per round, both ways")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks to this file")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-proxy-") as tmp_name:
        tmp = Path(tmp_name)
        redis_proc, redis_url = start_redis(tmp)
        try:
            settings = Settings(
                data_dir=tmp / "data",
                admin_key=ADMIN_KEY,
                redis_url=redis_url,
                # The limiter still runs for every request; it must not refuse the bench's.
                inference_requests_per_minute=RATE,
                inference_burst=RATE,
            )
            run(settings, tmp, opts)
        finally:
            redis_proc.stop()


def run(settings: Settings, tmp: Path, opts: argparse.Namespace) -> None:
    from service.deployments.serving import route_of

    # The model's application is its base model's, known before the model is registered.
    probe_job, probe_model = rows("probe")
    app = route_of(probe_model, probe_job)[0].app
    apps = [app]
    log = tmp / "uvicorn.log"
    with uvicorn("bench.proxy_overhead:upstream_stub", dict(os.environ), log) as stub:
        env = _env(settings.model_copy(update={"serve_url": stub}), apps)
        with uvicorn("bench.proxy_overhead:control_plane_app", env, log, opts.profile) as url:
            measure_both(settings, url, stub, app, opts)


def measure_both(
    settings: Settings, url: str, stub: str, app: str, opts: argparse.Namespace
) -> None:
    if True:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        made = httpx.post(f"{url}/v1/admin/tenants", json={"name": "bench"}, headers=admin)
        made.raise_for_status()
        tenant_id, key = made.json()["tenant"]["id"], made.json()["api_key"]
        model_id, multiplexed = register(settings, tenant_id)
        body = {"model": model_id, "prompt": "red green blue ->", "max_tokens": 8}
        through = (f"{url}/v1/completions", {"Authorization": f"Bearer {key}"})
        direct = (f"{stub}/{app}/v1/completions", {"serve_multiplexed_model_id": multiplexed})
        with httpx.Client(timeout=60) as client:
            measure(client, through, direct, body, opts.warmup)
            print(f"{'round':>5} {'through p50 ms':>15} {'direct p50 ms':>14} {'added ms':>9}")
            added = []
            for i in range(opts.rounds):
                t, d = measure(client, through, direct, body, opts.requests)
                p_t, p_d = statistics.median(t) * 1000, statistics.median(d) * 1000
                added.append(p_t - p_d)
                print(f"{i + 1:>5} {p_t:>15.2f} {p_d:>14.2f} {p_t - p_d:>9.2f}")
            print(f"median added latency over {opts.rounds} rounds: "
                  f"{statistics.median(added):.2f} ms")  # fmt: skip


def upstream_stub() -> Any:
    """`uvicorn --factory bench.proxy_overhead:upstream_stub`."""
    return upstream_app


if __name__ == "__main__":
    main()

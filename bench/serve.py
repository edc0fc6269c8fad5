"""Serving throughput and latency: batching, adapter multiplexing, the control plane's proxy.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py [--seconds 6] [--max-tokens 64]

Starts an embedded stack (Redis, a local Ray head) and the control plane as its own
process, registers 8 LoRA adapters of tiny-gpt2 (random non-zero weights: serving cost
does not depend on what an adapter learnt) as one tenant's fine-tuned models, pins their
application to one replica, and sends `POST /v1/completions` (greedy, `--max-tokens`) from
closed-loop clients at concurrency 1, 8 and 32 for:

  (a) one adapter,
  (b) 8 adapters interleaved (request i uses adapter i mod 8),
  (c) batching off (the same as (a) with the replica's batch size set to 1).

Prints requests/s, generated tokens/s, p50/p99 latency and the mean batch a request was
decoded in per cell; the ratios (b)/(a) and
(a)/(c) at concurrency 32; the adapter cold-load time (the replica's own measure, over the
8 first loads); and the control plane's added latency: p50 through the control plane
minus p50 straight to Serve's proxy, same request, one at a time. Targets: (b)/(a) >= 0.8,
(a)/(c) >= 3, cold load <= 100 ms, proxy <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
)

import httpx  # noqa: E402

from service.config import Settings  # noqa: E402
from service.stack import embedded_stack, free_port  # noqa: E402
from workers.spec import ADAPTER_LOAD_HEADER, BATCH_SIZE_HEADER  # noqa: E402

ADMIN_KEY = "bench-admin-key"
N_ADAPTERS = 8
CONCURRENCY = (1, 8, 32)
PROMPT = "red green blue ->"


def make_adapters(models_dir: Path, root: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    from workers.sources import resolve_model_source

    source = resolve_model_source("tiny:tiny-gpt2", models_dir)
    out = []
    for i in range(N_ADAPTERS):
        torch.manual_seed(i)
        config = LoraConfig(
            r=8,
            target_modules=["c_attn"],
            fan_in_fan_out=True,
            init_lora_weights=False,
            task_type=TaskType.CAUSAL_LM,
        )
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(source), config)
        path = root / f"adapter{i}" / "model"
        model.save_pretrained(str(path))
        out.append(path)
    return out


def register(
    settings: Settings,
    tenant_id: str,
    adapters: list[Path],
    *,
    model: str = "tiny-gpt2",
    source: str = "tiny:tiny-gpt2",
    task: str = "causal_lm",
    labels: list[str] | None = None,
) -> list[str]:
    """Fine-tuned model rows (and their jobs'), as the event consumer writes them when a job
    succeeds; the spec's source, task and labels pick the serving application."""
    from sqlmodel import Session

    from service.common import new_id, now
    from service.db import make_engine
    from service.models import FineTunedModel, Job
    from service.models.status import JobStatus

    spec: dict[str, Any] = {"base_model": {"name": model, "source": source}, "task": task}
    if labels is not None:
        spec["labels"] = labels
    engine = make_engine(settings.database_url)
    ids = []
    with Session(engine) as s:
        for i, path in enumerate(adapters):
            job_id = new_id("ftjob")
            t = now()
            s.add(
                Job(
                    id=job_id,
                    tenant_id=tenant_id,
                    status=JobStatus.SUCCEEDED,
                    model=model,
                    task=task,
                    training_file="file-bench",
                    seed=i,
                    spec=spec,
                    created_at=t,
                    updated_at=t,
                    finished_at=t,
                )
            )
            s.flush()
            model_id = f"ft:{model}:bench:a{i}:{job_id}"
            s.add(
                FineTunedModel(
                    id=model_id,
                    tenant_id=tenant_id,
                    job_id=job_id,
                    base_model=model,
                    task=task,
                    adapter_type="lora",
                    artifact_uri=path.as_uri(),
                    created_at=t,
                )
            )
            ids.append(model_id)
        s.commit()
    engine.dispose()
    return ids


def bench_settings(tmp: Path, replica_cpus: float) -> Settings:
    """A serving bench's stack: its own data dir, Serve replicas scaling up at once."""
    return Settings(
        data_dir=tmp / "data",
        admin_key=ADMIN_KEY,
        reconcile_interval_s=1.0,
        serve_replica_cpus=replica_cpus,
        serve_upscale_delay_s=0.0,
    )


@contextmanager
def control_plane(settings: Settings, log: Path) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ)
    for key, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"TUNEPLANE_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"control plane did not start; see {log}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@dataclass
class Cell:
    requests: int
    tokens: int
    seconds: float
    latencies: list[float]
    errors: int
    batch_sizes: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def closed_loop(
    url: str,
    headers_for: Any,
    body_for: Any,
    concurrency: int,
    seconds: float,
) -> Cell:
    latencies: list[float] = []
    batch_sizes: list[float] = []
    tokens = errors = 0
    counter = 0
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal tokens, errors, counter
            while time.perf_counter() < stop_at:
                i = counter
                counter += 1
                started = time.perf_counter()
                r = await client.post(url, json=body_for(i), headers=headers_for(i))
                if r.status_code != 200:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                tokens += int(r.json()["usage"]["completion_tokens"])
                batch_sizes.append(float(r.headers.get(BATCH_SIZE_HEADER, "0")))

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return Cell(len(latencies), tokens, elapsed, latencies, errors, batch_sizes)


def wait_replicas(url: str, key: str, dep_id: str, want: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        d = httpx.get(
            f"{url}/v1/deployments/{dep_id}", headers={"Authorization": f"Bearer {key}"}
        ).json()
        if d["status"] == "running" and d["running_replicas"] == want:
            return
        time.sleep(0.5)
    raise RuntimeError("the benchmark's replica did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per cell")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--proxy-requests", type=int, default=200)
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        with embedded_stack(bench_settings(tmp, replica_cpus=1.0), num_cpus=2) as settings:
            settings = settings.model_copy(update={"worker_env": {"PYTHONPATH": str(REPO_ROOT)}})
            adapters = make_adapters(settings.resolved_models_dir, tmp / "artifacts")
            results: dict[tuple[str, int], Cell] = {}
            cold: list[float] = []
            proxy: tuple[float, float] = (0.0, 0.0)
            for batching in (True, False):
                run_settings = settings.model_copy(
                    update={"serve_max_batch_size": 32 if batching else 1}
                )
                log = tmp / "control-plane.log"
                with control_plane(run_settings, log) as url:
                    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
                    if batching:
                        made = httpx.post(
                            f"{url}/v1/admin/tenants", json={"name": "bench"}, headers=admin
                        ).json()
                        tenant_id, key = made["tenant"]["id"], made["api_key"]
                        models = register(settings, tenant_id, adapters)
                        auth = {"Authorization": f"Bearer {key}"}
                        dep = httpx.post(
                            f"{url}/v1/deployments",
                            json={"model": models[0], "min_replicas": 1, "max_replicas": 1},
                            headers=auth,
                        ).json()
                    wait_replicas(url, key, dep["id"], 1)
                    # Serve's own address and the app route, for the direct calls.
                    from service.deployments.serving import serve_url

                    serve = serve_url(run_settings)
                    apps = httpx.get(
                        f"{settings.ray_address}/api/serve/applications/",
                        headers=_ray_headers(),
                    ).json()["applications"]
                    # The adapters' application: base LMs of the catalog have theirs too.
                    app = next(n for n in apps if n.startswith("lm-tiny-tiny-gpt2-"))

                    def body(i: int, pick: int = 0, ms: list[str] = models) -> dict[str, Any]:
                        return {
                            "model": ms[pick],
                            "prompt": PROMPT,
                            "max_tokens": opts.max_tokens,
                            "temperature": 0,
                        }

                    if batching:
                        for i, path in enumerate(adapters):
                            # The replica times its own load of each adapter, on first use.
                            r = httpx.post(
                                f"{serve}/{app}/v1/completions",
                                json=body(0, i),
                                headers={"serve_multiplexed_model_id": path.as_uri()},
                                timeout=120,
                            )
                            if ADAPTER_LOAD_HEADER in r.headers:
                                cold.append(float(r.headers[ADAPTER_LOAD_HEADER]))
                        proxy = measure_proxy(url, auth, serve, app, adapters[0], body, opts)
                    for conc in CONCURRENCY:
                        scenarios = ["a", "b"] if batching else ["c"]
                        for name in scenarios:

                            def pick_body(i: int, name: str = name) -> dict[str, Any]:
                                return body(i, i % N_ADAPTERS if name == "b" else 0)

                            # A short warm-up so every adapter is loaded and the
                            # replica's batches are warm before timing.
                            asyncio.run(
                                closed_loop(
                                    f"{url}/v1/completions",
                                    lambda i, auth=auth: auth,
                                    pick_body,
                                    conc,
                                    1.0,
                                )
                            )
                            results[(name, conc)] = asyncio.run(
                                closed_loop(
                                    f"{url}/v1/completions",
                                    lambda i, auth=auth: auth,
                                    pick_body,
                                    conc,
                                    opts.seconds,
                                )
                            )
            report(results, cold, proxy)


def _ray_headers() -> dict[str, str]:
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    return dict(get_auth_headers_if_auth_enabled({}))


def measure_proxy(
    url: str,
    auth: dict[str, str],
    serve: str,
    app: str,
    adapter: Path,
    body: Any,
    opts: argparse.Namespace,
) -> tuple[float, float]:
    """p50 of one-at-a-time requests through the control plane and straight to Serve,
    alternated in blocks of 10 so drift in the machine's load hits both alike."""
    through: list[float] = []
    direct: list[float] = []
    direct_headers = {"serve_multiplexed_model_id": adapter.as_uri()}
    with httpx.Client(timeout=60) as client:
        for block in range(opts.proxy_requests // 10):
            for _ in range(10):
                target, latencies = (
                    (f"{url}/v1/completions", through) if block % 2 == 0 else (None, direct)
                )
                started = time.perf_counter()
                if target is not None:
                    r = client.post(target, json=body(0), headers=auth)
                else:
                    r = client.post(
                        f"{serve}/{app}/v1/completions", json=body(0), headers=direct_headers
                    )
                r.raise_for_status()
                latencies.append(time.perf_counter() - started)
    return statistics.median(through) * 1000, statistics.median(direct) * 1000


def report(
    results: dict[tuple[str, int], Cell], cold: list[float], proxy: tuple[float, float]
) -> None:
    names = {"a": "(a) one adapter", "b": "(b) 8 adapters", "c": "(c) batching off"}
    print()
    head = ("scenario", "conc", "req/s", "tok/s", "p50 ms", "p99 ms", "batch", "errors")
    print(f"{head[0]:<20} " + " ".join(f"{h:>8}" for h in head[1:]))
    for (name, conc), cell in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        print(
            f"{names[name]:<20} {conc:>8} {cell.rps:>8.1f} {cell.tokens / cell.seconds:>8.1f} "
            f"{cell.pct(0.5):>8.1f} {cell.pct(0.99):>8.1f} "
            f"{statistics.mean(cell.batch_sizes or [0]):>8.1f} {cell.errors:>8}"
        )
    a, b, c = results[("a", 32)], results[("b", 32)], results[("c", 32)]
    print()
    print(f"{'figure':<44} {'value':>10} {'target':>10}")
    print(f"{'(b)/(a) throughput at concurrency 32':<44} {b.rps / a.rps:>10.2f} {'>= 0.8':>10}")
    print(f"{'(a)/(c) throughput at concurrency 32':<44} {a.rps / c.rps:>10.2f} {'>= 3':>10}")
    if cold:
        print(
            f"{'adapter cold load, median of 8 (ms)':<44} "
            f"{statistics.median(cold) * 1000:>10.1f} {'<= 100':>10}"
        )
        print(f"{'adapter cold load, max of 8 (ms)':<44} {max(cold) * 1000:>10.1f}")
    through, direct = proxy
    print(f"{'p50 via control plane (ms)':<44} {through:>10.2f}")
    print(f"{'p50 straight to Serve (ms)':<44} {direct:>10.2f}")
    print(f"{'control plane proxy overhead, p50 (ms)':<44} {through - direct:>10.2f} {'<= 5':>10}")


if __name__ == "__main__":
    main()

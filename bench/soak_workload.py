"""The soak's workload: tenant clients and the inference client, each call recorded.

Three tenants act every few seconds (uploads, some malformed; submits of five job kinds;
cancels, pauses, resumes; deletes of files and models; deployments created and scaled to
zero; reads), and the official `openai` client sends chat completions and classifications
at a steady rate. A call answered 5xx, or not at all, is retried with backoff for up to
`retry_s` seconds (POSTs carry an Idempotency-Key, so a retry never does the work twice);
every attempt is a `Request` in the record, a retry pointing at its first attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from bench.soak_checks import JobRecord, Record, Request, Upload
from bench.soak_faults import Stack
from tests.factories import jsonl, prompt_completion_records
from tests.service.reliability.harness import TERMINAL

PAIRS = [
    {
        "input": {"messages": [{"role": "user", "content": f"Name colour {i}."}]},
        "preferred_output": [{"role": "assistant", "content": f"Colour {i} is red."}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    for i in range(6)
]
MALFORMED = [b"{not json\n", b'{"foo": 1}\n{"bar": 2}\n', b"", b'{"prompt": 3}\n']


def job_body(kind: str, files: dict[str, str]) -> dict[str, Any]:
    hp: dict[str, Any] = {"n_epochs": 2, "batch_size": 4}
    body: dict[str, Any] = {"model": "tiny-gpt2", "training_file": files["train"]}
    if kind == "long":  # long enough to be paused; checkpoints for retention to thin out
        body["training_file"] = files["long"]
        hp = {"n_epochs": 4, "batch_size": 1, "checkpoint_every_steps": 32}
    elif kind == "full":
        body["adapter"] = {"type": "full"}
        hp = {"n_epochs": 1, "batch_size": 4}
    elif kind == "search":
        body["validation_file"] = files["valid"]
        hp = {"n_epochs": 1, "batch_size": 4}
        body["search"] = {
            "space": {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
            "num_trials": 2,
            "scheduler": "fifo",
            "max_concurrent_trials": 1,
        }
    elif kind == "dpo":
        body["training_file"] = files["pairs"]
        body["method"] = {
            "type": "dpo",
            "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}},
        }
        return body
    body["hyperparameters"] = hp
    return body


@dataclass
class Tenant:
    name: str
    key: str
    files: dict[str, str] = field(default_factory=dict)
    extra_files: list[str] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # id -> last status seen
    paused_at: dict[str, float] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)  # LoRA models of its succeeded jobs
    deployments: dict[str, bool] = field(default_factory=dict)  # id -> scaled to zero

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class Workload:
    def __init__(self, stack: Stack, rng: random.Random, retry_s: float) -> None:
        self.stack = stack
        self.rng = rng
        self.retry_s = retry_s
        self.rec = Record()
        self.tenants: list[Tenant] = []
        self.fault_tenant: Tenant | None = None
        self.served: dict[str, str] = {}  # "chat" / "classify" -> model id
        self.t0 = time.monotonic()

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)

    # -- recording calls ------------------------------------------------------------------

    async def call(
        self, kind: str, tenant: str, attempt: Callable[[], Awaitable[tuple[int, Any]]]
    ) -> tuple[int | None, Any]:
        """Runs `attempt` (-> (status, payload)), retrying a 5xx or no answer with backoff
        for up to retry_s; records every attempt."""
        first: Request | None = None
        delay = 1.0
        while True:
            req = Request(len(self.rec.requests), kind, tenant, time.monotonic())
            req.retry_of = first.id if first else None
            self.rec.requests.append(req)
            payload: Any = None
            try:
                req.status, payload = await attempt()
            except (httpx.HTTPError, OSError) as exc:
                req.error = type(exc).__name__
            except Exception as exc:  # the openai client's connection errors
                if type(exc).__name__ not in ("APIConnectionError", "APITimeoutError"):
                    raise
                req.error = type(exc).__name__
            req.end = time.monotonic()
            first = first or req
            first.final_status = req.status
            failed = req.status is None or req.status >= 500
            if not failed or time.monotonic() - first.start > self.retry_s:
                return req.status, payload
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 8.0)

    async def http(
        self, client: httpx.AsyncClient, kind: str, t: Tenant, method: str, path: str, **kw: Any
    ) -> tuple[int | None, Any]:
        headers = {**t.headers, **kw.pop("headers", {})}
        if method == "POST":  # a retry must not do the work twice
            headers["Idempotency-Key"] = uuid.uuid4().hex

        async def attempt() -> tuple[int, Any]:
            r = await client.request(method, path, headers=headers, **kw)
            body = (
                r.json()
                if r.headers.get("content-type", "").startswith("application/json")
                else None
            )
            return r.status_code, body

        return await self.call(kind, t.name, attempt)

    # -- workload -------------------------------------------------------------------------

    async def refresh(self, c: httpx.AsyncClient, t: Tenant) -> None:
        status, body = await self.http(
            c, "list_jobs", t, "GET", "/v1/fine_tuning/jobs", params={"limit": 50}
        )
        if status != 200 or not body:
            return
        for j in body["data"]:
            if j["id"] not in t.jobs:
                continue
            t.jobs[j["id"]] = j["status"]
            kind = self.rec.jobs[j["id"]].kind if j["id"] in self.rec.jobs else ""
            model = j.get("fine_tuned_model")
            new = model not in t.models and model not in self.rec.deleted_models
            if j["status"] == "succeeded" and model and kind in ("lora", "long", "dpo") and new:
                t.models.append(model)

    async def act(self, c: httpx.AsyncClient, t: Tenant) -> None:
        rng = self.rng
        active = [j for j, s in t.jobs.items() if s not in TERMINAL]
        action = rng.choices(
            [
                "upload",
                "submit",
                "cancel",
                "pause",
                "resume",
                "delete_file",
                "delete_model",
                "deploy",
                "read",
            ],
            [3, 4, 0.5, 1, 2, 1, 1, 1, 3],
        )[0]
        if action == "upload":
            bad = rng.random() < 0.2
            rows = prompt_completion_records(rng.randrange(4, 12))
            content = rng.choice(MALFORMED) if bad else jsonl(rows)
            files = {"file": ("u.jsonl", content, "application/jsonl")}
            status, body = await self.http(
                c,
                "upload_bad" if bad else "upload",
                t,
                "POST",
                "/v1/files",
                files=files,
                data={"purpose": "fine-tune"},
            )
            if status == 200 and body:
                sha = hashlib.sha256(content).hexdigest()
                self.rec.uploads[body["id"]] = Upload(body["id"], t.name, sha)
                t.extra_files.append(body["id"])
        elif action == "submit" and len(active) < 2:
            kind = rng.choice(["lora", "lora", "long", "full", "search", "dpo"])
            status, body = await self.http(
                c, f"submit_{kind}", t, "POST", "/v1/fine_tuning/jobs", json=job_body(kind, t.files)
            )
            if status == 200 and body:
                self.rec.jobs[body["id"]] = JobRecord(body["id"], t.name, kind, time.monotonic())
                t.jobs[body["id"]] = body["status"]
        elif action == "cancel" and active:
            await self.http(
                c, "cancel", t, "POST", f"/v1/fine_tuning/jobs/{rng.choice(active)}/cancel"
            )
        elif action == "pause" and (running := [j for j in active if t.jobs[j] == "running"]):
            job_id = rng.choice(running)
            status, _ = await self.http(
                c, "pause", t, "POST", f"/v1/fine_tuning/jobs/{job_id}/pause"
            )
            if status == 200:
                t.paused_at[job_id] = time.monotonic()
        elif action == "resume":
            due = [j for j, at in t.paused_at.items() if time.monotonic() - at > 10]
            for job_id in due[:1]:
                status, _ = await self.http(
                    c, "resume", t, "POST", f"/v1/fine_tuning/jobs/{job_id}/resume"
                )
                if status == 200 or t.jobs.get(job_id) in TERMINAL:
                    t.paused_at.pop(job_id)
        elif action == "delete_file" and t.extra_files:
            file_id = t.extra_files.pop(rng.randrange(len(t.extra_files)))
            status, _ = await self.http(c, "delete_file", t, "DELETE", f"/v1/files/{file_id}")
            if status == 200:
                self.rec.uploads[file_id].deleted = True
            elif status == 409:  # in use by an active job: later
                t.extra_files.append(file_id)
        elif action == "delete_model" and t.models:
            model = t.models.pop(rng.randrange(len(t.models)))
            status, _ = await self.http(c, "delete_model", t, "DELETE", f"/v1/models/{model}")
            if status == 200:
                self.rec.deleted_models.add(model)
        elif action == "deploy":
            up = [d for d, zero in t.deployments.items() if not zero]
            if up:  # scale the oldest one to zero
                status, _ = await self.http(
                    c,
                    "scale_to_zero",
                    t,
                    "PATCH",
                    f"/v1/deployments/{up[0]}",
                    json={"min_replicas": 0},
                )
                if status == 200:
                    t.deployments[up[0]] = True
                elif status == 404:  # its model was deleted, and the deployment with it
                    t.deployments.pop(up[0])
            elif t.models:
                body = {"model": rng.choice(t.models), "min_replicas": 1, "max_replicas": 1}
                status, got = await self.http(c, "deploy", t, "POST", "/v1/deployments", json=body)
                if status == 200 and got:
                    t.deployments[got["id"]] = False
        else:
            jobs = list(t.jobs)
            if jobs and rng.random() < 0.5:
                path = f"/v1/fine_tuning/jobs/{rng.choice(jobs)}/events"
                await self.http(c, "events", t, "GET", path)
            else:
                await self.http(c, "list_files", t, "GET", "/v1/files")

    async def tenant_loop(self, t: Tenant, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.stack.url, timeout=60) as c:
            while not stop.is_set():
                await asyncio.sleep(self.rng.uniform(1.5, 4.0))
                await self.refresh(c, t)
                await self.act(c, t)

    async def inference_loop(self, stop: asyncio.Event, per_s: float) -> None:
        import openai

        clients = {
            role: openai.AsyncOpenAI(
                api_key=self.tenants[i].key,
                base_url=self.stack.url + "/v1",
                max_retries=0,
                timeout=120,
            )
            for i, role in ((0, "chat"), (1, "classify"))
        }
        limit = asyncio.Semaphore(8)  # calls backing off during a fault hold a slot
        tasks: set[asyncio.Task[Any]] = set()
        n = 0

        async def one(role: str) -> None:
            async def attempt() -> tuple[int, Any]:
                try:
                    if role == "chat":
                        await clients[role].chat.completions.create(
                            model=self.served["chat"],
                            max_tokens=4,
                            messages=[{"role": "user", "content": f"Count after {n}:"}],
                        )
                    else:
                        await clients[role].post(
                            "/classifications",
                            cast_to=httpx.Response,
                            body={"model": self.served["classify"], "input": f"review {n}: great"},
                        )
                    return 200, None
                except openai.APIStatusError as exc:
                    return exc.status_code, None

            async with limit:
                await self.call(role, self.tenants[0 if role == "chat" else 1].name, attempt)

        while not stop.is_set():
            if not limit.locked():
                task = asyncio.create_task(one("chat" if n % 2 == 0 else "classify"))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            await asyncio.sleep(1 / per_s)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def sampler(self, stop: asyncio.Event) -> None:
        import redis.asyncio as aredis

        r = aredis.Redis.from_url(self.stack.redis.url, socket_timeout=2)
        tick = 0
        while not stop.is_set():
            plane = self.stack.plane
            if plane is not None and plane.proc.poll() is None:
                try:
                    rss = psutil.Process(plane.proc.pid).memory_info().rss
                    self.rec.rss.append((time.monotonic(), self.stack.planes_started, rss))
                except psutil.Error:
                    pass
            if tick % 2 == 0:
                with contextlib.suppress(Exception):  # Redis is down in its fault window
                    self.rec.redis_bytes.append(int((await r.info("memory"))["used_memory"]))
            tick += 1
            await asyncio.sleep(5)
        await r.aclose()

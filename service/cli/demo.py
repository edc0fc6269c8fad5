"""`tuneplane demo`: the whole product end to end on this machine. It starts the stack in a
child process, creates a tenant, uploads a small chat set, fine-tunes SmolLM2-135M-Instruct
with LoRA, follows the job, compares the base and fine-tuned models' answers, and stops it.

It calls the HTTP API directly (not the `client` of the API commands): it owns the stack it
talks to, and prints what a user of the API would see at each step."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.cli.follow import until_ended
from service.models.status import TERMINAL, JobStatus
from service.stack import free_port

console = Console()
DEMO_DATA = Path(__file__).parent.parent / "demo_data"
DEMO_MODEL = "smollm2-135m-instruct"
# The behaviour the demo data teaches: every answer in this format.
DEMO_FORMAT = re.compile(r"^CAPITAL: \S")


@contextmanager
def _stack_process(data_dir: Path, admin_key: str) -> Iterator[tuple[str, int]]:
    """`tuneplane up` in a child process; stopped with SIGINT, as a user would. Yields
    its URL and process id."""
    port = free_port()
    env = {**os.environ, "TUNEPLANE_ADMIN_KEY": admin_key}
    log = (data_dir / "up.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the stack exited; see {data_dir / 'up.log'}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stack was not ready in 180 s; see {data_dir / 'up.log'}")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        console.print(f"[red]{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text}")
        raise typer.Exit(1)
    return r.json()


def _ask(api: httpx.Client, model: str, messages: list[dict[str, str]]) -> str:
    r = api.post(
        "/v1/chat/completions",
        json={"model": model, "messages": messages, "max_tokens": 24, "temperature": 0},
        timeout=300,
    )
    return str(_check(r)["choices"][0]["message"]["content"])


def _demo_compare(api: httpx.Client, model: str) -> int:
    """Ask the base model and the fine-tuned one the held-out questions, side by side;
    returns how many fine-tuned answers show the taught format."""
    rows = [json.loads(line) for line in (DEMO_DATA / "valid.jsonl").read_text().splitlines()]
    began = time.monotonic()
    # The first request starts the replica that serves the base model and its adapters.
    _ask(api, DEMO_MODEL, [{"role": "user", "content": "Hello!"}])
    console.print(f"Ray Serve replica started in {time.monotonic() - began:.1f} s")
    table = Table(title=f"held-out questions: {DEMO_MODEL} before and after fine-tuning")
    for column in ("question", "base model", "fine-tuned"):
        table.add_column(column, overflow="fold")
    learned = base_shows = 0
    latencies: dict[str, list[float]] = {"base": [], "tuned": []}
    for row in rows[:5]:
        question = [m for m in row["messages"] if m["role"] != "assistant"]
        began = time.monotonic()
        before = _ask(api, DEMO_MODEL, question)
        latencies["base"].append(time.monotonic() - began)
        began = time.monotonic()
        after = _ask(api, model, question)
        latencies["tuned"].append(time.monotonic() - began)
        learned += bool(DEMO_FORMAT.match(after))
        base_shows += bool(DEMO_FORMAT.match(before))
        table.add_row(escape(question[-1]["content"]), escape(before), escape(after))
    console.print(table)
    console.print(
        f"answers in the taught format 'CAPITAL: <city>': fine-tuned {learned}/5, "
        f"base model {base_shows}/5"
    )
    console.print(
        f"latency: first base answer on the ready replica {latencies['base'][0]:.2f} s, "
        f"first fine-tuned answer (loads the adapter) {latencies['tuned'][0]:.2f} s, "
        f"then {min(latencies['tuned'][1:]):.2f}-{max(latencies['tuned'][1:]):.2f} s"
    )
    return learned


class _PeakMemory:
    """Samples the memory of a process and all its descendants (the stack: the API,
    Redis, Ray and its workers and replicas) until stopped; keeps the peak. PSS, not RSS:
    Ray's processes share many pages (torch, the object store), which RSS would count
    once per process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(1.0):
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0
            for proc in procs:
                with contextlib.suppress(psutil.Error, AttributeError):
                    total += proc.memory_full_info().pss
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


def _follow(api: httpx.Client, job_id: str, timeout_s: float) -> tuple[dict[str, Any], list[Any]]:
    """Print the job's events as they come until it ends; returns the job and its events."""
    seen: list[dict[str, Any]] = []

    def poll() -> dict[str, Any]:
        params: dict[str, Any] = {"limit": 100}
        fresh: list[dict[str, Any]] = []
        after = seen[-1]["id"] if seen else None
        # Events come newest first; page back to the last one already shown.
        page = _check(api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params))["data"]
        for e in page:
            if e["id"] == after:
                break
            fresh.append(e)
        for e in reversed(fresh):
            seen.append(e)
            if e["type"] != "metrics" or e["data"].get("kind") == "eval":
                console.print(f"  \\[{e['level']}] {escape(e['message'])}")
            elif int(e["data"].get("step", 0)) % 10 == 0:
                console.print(f"  {escape(e['message'])}")
        job: dict[str, Any] = _check(api.get(f"/v1/fine_tuning/jobs/{job_id}"))
        return job

    job = until_ended(poll, timeout_s)
    if job["status"] not in TERMINAL:
        console.print(f"[red]job still {job['status']} after {timeout_s:.0f} s")
        raise typer.Exit(1)
    return job, seen


def _upload(api: httpx.Client) -> dict[str, str]:
    """The demo's training and validation files, uploaded; their ids by name."""
    ids = {}
    for name in ("train", "valid"):
        path = DEMO_DATA / f"{name}.jsonl"
        with path.open("rb") as fh:
            f = _check(
                api.post(
                    "/v1/files",
                    files={"file": (path.name, fh, "application/jsonl")},
                    data={"purpose": "fine-tune"},
                )
            )
        ids[name] = f["id"]
        console.print(f"uploaded {path.name}: {f['id']} ({f['examples']} {f['format']} examples)")
    return ids


def _submit(api: httpx.Client, ids: dict[str, str]) -> dict[str, Any]:
    job: dict[str, Any] = _check(
        api.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": DEMO_MODEL,
                "training_file": ids["train"],
                "validation_file": ids["valid"],
                "suffix": "capitals",
                "seed": 7,
                # Epochs, batch size and learning rate: "auto", from the data's size.
                "method": {"type": "supervised", "supervised": {"hyperparameters": {}}},
                "adapter": {"type": "lora", "r": 8, "target_modules": "all-linear"},
            },
        )
    )
    hp = job["hyperparameters"]
    console.print(
        f"submitted fine-tuning job {job['id']} of {DEMO_MODEL} ({job['status']}): "
        f"auto hyperparameters n_epochs={hp['n_epochs']}, batch_size={hp['batch_size']}, "
        f"learning_rate={hp['learning_rate']:g}"
    )
    return job


def _outcome(job: dict[str, Any], events: list[Any], started: float) -> None:
    """The ended job: status, model, how its training and validation losses moved."""
    losses = [e["data"]["train_loss"] for e in events if e["data"] and "train_loss" in e["data"]
              and e["data"].get("kind") == "metrics"]  # fmt: skip
    evals = [e["data"]["eval_loss"] for e in events if e["data"] and "eval_loss" in e["data"]]
    table = Table(title=f"fine-tuning job {job['id']}")
    table.add_column("")
    table.add_column("")
    table.add_row("status", job["status"])
    table.add_row("model", str(job["fine_tuned_model"]))
    if losses:
        table.add_row(
            "training loss", f"{losses[0]:.4f} at the start -> {losses[-1]:.4f} at the end"
        )
    if evals:
        table.add_row("validation loss", f"{evals[0]:.4f} -> {evals[-1]:.4f}")
    table.add_row("trained tokens", str(job["trained_tokens"]))
    if job["error"]:
        table.add_row("error", job["error"]["message"])
    table.add_row("training wall time", f"{time.monotonic() - started:.0f} s")
    console.print(table)


def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the demo's data here (default: a temp dir).")
    ] = None,
) -> None:
    """Start the stack, create a tenant, upload a small chat set, fine-tune SmolLM2-135M-
    Instruct with LoRA to answer in a set format, follow the job to its end, compare the
    base and fine-tuned models' answers to held-out questions, then stop the stack."""
    workdir = data_dir or Path(tempfile.mkdtemp(prefix="tuneplane-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    admin_key = secrets.token_urlsafe(24)
    console.rule("Tuneplane demo")
    started = time.monotonic()
    learned = 0
    with _stack_process(workdir, admin_key) as (url, pid):
        memory = _PeakMemory(pid)
        console.print(
            f"stack up at {url} in {time.monotonic() - started:.0f} s (data in {workdir})"
        )
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"})
        created = _check(admin.post("/v1/admin/tenants", json={"name": "demo-team"}))
        console.print(f"tenant [bold]{created['tenant']['name']}[/] created; API key issued")
        api = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {created['api_key']}"}, timeout=30
        )
        job = _submit(api, _upload(api))
        job, events = _follow(api, job["id"], timeout_s=900)
        _outcome(job, events, started)
        if job["status"] == JobStatus.SUCCEEDED:
            learned = _demo_compare(api, str(job["fine_tuned_model"]))
        peak = memory.stop()
    console.print(
        f"the stack has been stopped; demo took {time.monotonic() - started:.0f} s, peak "
        f"memory of the stack {peak / 2**30:.2f} GiB"
    )
    if job["status"] != JobStatus.SUCCEEDED or learned < 4:
        raise typer.Exit(1)

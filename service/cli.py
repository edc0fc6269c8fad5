"""The `tuneplane` command."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
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

from service.config import get_settings

app = typer.Typer(help="Tuneplane: self-hosted fine-tuning with an OpenAI-compatible API.")
db_app = typer.Typer(help="Database schema.")
app.add_typer(db_app, name="db")
console = Console()
DEMO_DATA = Path(__file__).parent / "demo_data"


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from service import db

    settings = get_settings()
    db.upgrade(settings.database_url, revision)
    console.print(f"database at {revision}: {settings.database_url}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
) -> None:
    """Run the API server alone (database and storage from TUNEPLANE_* settings)."""
    import uvicorn

    uvicorn.run("service.main:create_app", factory=True, host=host, port=port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _api_server(data_dir: Path, admin_key: str) -> Iterator[str]:
    """The API under uvicorn in a child process; stopped however the block ends."""
    port = _free_port()
    env = {**os.environ, "TUNEPLANE_DATA_DIR": str(data_dir), "TUNEPLANE_ADMIN_KEY": admin_key}
    log = (data_dir / "api.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"API server exited; see {data_dir / 'api.log'}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("API server did not become ready in 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        console.print(f"[red]{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text}")
        raise typer.Exit(1)
    return r.json()


@app.command()
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the demo's data here (default: a temp dir).")
    ] = None,
) -> None:
    """Start the API, create a tenant, upload the demo data, submit a fine-tuning job."""
    workdir = data_dir or Path(tempfile.mkdtemp(prefix="tuneplane-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    admin_key = secrets.token_urlsafe(24)
    console.rule("Tuneplane demo")
    with _api_server(workdir, admin_key) as url:
        console.print(f"API up at {url} (data in {workdir})")
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"})
        created = _check(admin.post("/v1/admin/tenants", json={"name": "demo-team"}))
        console.print(f"tenant [bold]{created['tenant']['name']}[/] created; API key issued")
        api = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {created['api_key']}"}, timeout=30
        )
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
            console.print(
                f"uploaded {path.name}: {f['id']} ({f['examples']} {f['format']} examples)"
            )
        job = _check(
            api.post(
                "/v1/fine_tuning/jobs",
                json={
                    "model": "tiny-gpt2",
                    "training_file": ids["train"],
                    "validation_file": ids["valid"],
                    "suffix": "demo",
                    "method": {
                        "type": "supervised",
                        "supervised": {"hyperparameters": {"n_epochs": 3}},
                    },
                    "adapter": {"type": "lora", "r": 8},
                },
            )
        )
        job = _check(api.get(f"/v1/fine_tuning/jobs/{job['id']}"))
        events = _check(api.get(f"/v1/fine_tuning/jobs/{job['id']}/events"))["data"]
        table = Table(title=f"fine-tuning job {job['id']}")
        table.add_column("field")
        table.add_column("value")
        for key in ("status", "model", "training_file", "validation_file", "seed"):
            table.add_row(key, str(job[key]))
        table.add_row("adapter", str(job["adapter"]))
        hp = job["hyperparameters"]
        table.add_row("hyperparameters", f"epochs={hp['n_epochs']} batch={hp['batch_size']} "
                      f"lr={hp['learning_rate']:g}")  # fmt: skip
        console.print(table)
        for e in reversed(events):
            console.print(f"  event \\[{e['level']}] {escape(e['message'])}")
    console.print(
        f"[bold green]job {job['id']} is {job['status']}[/]. The API server has been stopped."
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()

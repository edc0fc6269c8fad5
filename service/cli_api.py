"""The `tuneplane` commands that talk to a running service over its HTTP API: files, jobs,
models, deployments and admin. Where they connect, and with which key, comes from
`--url` / `--api-key`, else TUNEPLANE_URL / TUNEPLANE_API_KEY (TUNEPLANE_ADMIN_KEY for
admin commands), else the config file that `tuneplane login` writes."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from service.cli_follow import FollowState, validation_rows
from service.config import ClientSettings, client_config_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pydantic-settings[toml] brings it
    import tomli as tomllib

console = Console()
err = Console(stderr=True)

files_app = typer.Typer(help="Training files.", no_args_is_help=True)
jobs_app = typer.Typer(help="Fine-tuning jobs.", no_args_is_help=True)
models_app = typer.Typer(help="Base and fine-tuned models.", no_args_is_help=True)
deployments_app = typer.Typer(
    help="Serving deployments of fine-tuned models.", no_args_is_help=True
)
admin_app = typer.Typer(help="Administration (needs the admin key).", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants.", no_args_is_help=True)
keys_app = typer.Typer(help="A tenant's API keys.", no_args_is_help=True)
admin_app.add_typer(tenants_app, name="tenants")
admin_app.add_typer(keys_app, name="keys")

TERMINAL = ("succeeded", "failed", "cancelled")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
Limit = Annotated[int, typer.Option(help="At most this many, newest first.", min=1)]


@dataclass
class ClientOptions:
    """What the root command's --url / --api-key gave (None: use env or the file)."""

    url: str | None = None
    api_key: str | None = None


def _client(ctx: typer.Context, *, admin: bool = False) -> httpx.Client:
    opts = ctx.find_root().obj
    given = {}
    if isinstance(opts, ClientOptions):
        given = {k: v for k, v in (("url", opts.url), ("api_key", opts.api_key)) if v}
    settings = ClientSettings(**given)  # type: ignore[arg-type]
    key = settings.admin_key if admin else settings.api_key
    if admin and isinstance(opts, ClientOptions) and opts.api_key:
        key = opts.api_key
    if not key:
        which = "TUNEPLANE_ADMIN_KEY" if admin else "TUNEPLANE_API_KEY"
        err.print(f"[red]No API key: pass --api-key, set {which} or run `tuneplane login`.")
        raise typer.Exit(2)
    return httpx.Client(
        base_url=settings.url.rstrip("/"),
        headers={"Authorization": f"Bearer {key}"},
        timeout=settings.timeout_s,
    )


# Answers a restarting or upgrading control plane gives (through a load balancer).
UNAVAILABLE = (502, 503, 504)


def _call(
    client: httpx.Client, method: str, path: str, *, patience_s: float = 0.0, **kwargs: Any
) -> Any:
    """One API call; an error answer is printed (its OpenAI-shaped message) and exits 1.
    With `patience_s`, an unreachable or unavailable server is retried that long."""
    deadline = time.monotonic() + patience_s
    delay = 0.5
    while True:
        try:
            r = client.request(method, path, **kwargs)
            if r.status_code not in UNAVAILABLE or time.monotonic() >= deadline:
                break
        except httpx.TransportError as exc:
            if time.monotonic() >= deadline:
                err.print(f"[red]Cannot reach {escape(str(client.base_url))}: {escape(str(exc))}")
                raise typer.Exit(2) from None
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text
        err.print(f"[red]Error {r.status_code}: {escape(str(message))}")
        raise typer.Exit(1)
    return r.json()


def _print_json(value: Any) -> None:
    # Plain print: rich would wrap long lines and break the JSON for a pipe.
    typer.echo(json.dumps(value, indent=2))


def _when(ts: Any) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(ts)))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for name in columns:
        # Ids must stay whole to be copied: fold rather than cut.
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(escape("-" if v is None else str(v)) for v in row))
    console.print(table)


def _list_all(client: httpx.Client, path: str, limit: int) -> list[dict[str, Any]]:
    """Follow `after` cursors until `limit` items or the end."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    while len(out) < limit:
        params: dict[str, Any] = {"limit": min(100, limit - len(out))}
        if after:
            params["after"] = after
        page = _call(client, "GET", path, params=params)
        out.extend(page["data"])
        if not page.get("has_more") or not page["data"]:
            break
        after = page["data"][-1]["id"]
    return out


# -- login --------------------------------------------------------------------------------


def login(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="The service's base URL.")],
    api_key: Annotated[str | None, typer.Option(help="A tenant API key.")] = None,
    admin_key: Annotated[str | None, typer.Option(help="The admin key.")] = None,
) -> None:
    """Check the key against the service and save URL and keys in the config file."""
    if not api_key and not admin_key:
        err.print("[red]Give --api-key, --admin-key or both.")
        raise typer.Exit(2)
    base = url.rstrip("/")
    if api_key:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {api_key}"}) as c:
            _call(c, "GET", "/v1/models")
    if admin_key:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_key}"}) as c:
            _call(c, "GET", "/v1/admin/tenants")
    path = client_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep what the file had (an admin key saved earlier, a timeout) unless given anew.
    saved: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    saved.update({"url": base})
    saved.update({k: v for k, v in (("api_key", api_key), ("admin_key", admin_key)) if v})
    lines = [f"{k} = {json.dumps(v)}" for k, v in saved.items() if isinstance(v, str | int | float)]
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)  # it holds keys
    path.write_text("\n".join(lines) + "\n")
    console.print(f"saved to {escape(str(path))}")


# -- files --------------------------------------------------------------------------------


@files_app.command("upload")
def files_upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    purpose: str = "fine-tune",
    as_json: JsonFlag = False,
) -> None:
    """Upload a JSONL training or validation file (validated as it uploads)."""
    with _client(ctx) as c, path.open("rb") as fh:
        f = _call(
            c,
            "POST",
            "/v1/files",
            files={"file": (path.name, fh, "application/jsonl")},
            data={"purpose": purpose},
        )
    if as_json:
        _print_json(f)
    else:
        console.print(f"{f['id']}  {escape(f['filename'])}: {f['examples']} {f['format']} examples")


@files_app.command("list")
def files_list(ctx: typer.Context, as_json: JsonFlag = False, limit: Limit = 100) -> None:
    """List your files."""
    with _client(ctx) as c:
        data = _list_all(c, "/v1/files", limit)
    if as_json:
        _print_json(data)
        return
    rows = [
        [f["id"], f["filename"], f["format"], f["examples"], f["bytes"], _when(f["created_at"])]
        for f in data
    ]
    _table("files", ["id", "filename", "format", "examples", "bytes", "created"], rows)


@files_app.command("delete")
def files_delete(ctx: typer.Context, file_id: str) -> None:
    """Delete a file."""
    with _client(ctx) as c:
        _call(c, "DELETE", f"/v1/files/{file_id}")
    console.print(f"deleted {escape(file_id)}")


# -- jobs ---------------------------------------------------------------------------------


def _job_rows(jobs: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [j["id"], j["status"], j["model"], j.get("fine_tuned_model"), _when(j["created_at"])]
        for j in jobs
    ]


def _show_job(job: dict[str, Any], seen: FollowState | None = None) -> None:
    table = Table(title=f"job {escape(job['id'])}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", overflow="fold")
    hp = job.get("hyperparameters") or {}
    rows = [
        ("status", job["status"]),
        ("model", job["model"]),
        ("training file", job.get("training_file")),
        ("validation file", job.get("validation_file")),
        ("fine-tuned model", job.get("fine_tuned_model")),
        ("epochs / batch / lr", f"{hp.get('n_epochs')} / {hp.get('batch_size')} / "
                                f"{hp.get('learning_rate', hp.get('learning_rate_multiplier'))}"),
        ("trained tokens", job.get("trained_tokens")),
        *validation_rows(job, seen),
        ("created", _when(job.get("created_at"))),
        ("finished", _when(job.get("finished_at"))),
    ]  # fmt: skip
    if job.get("search_result"):
        rows.append(("best trial", json.dumps(job["search_result"])))
    if job.get("error"):
        rows.append(("error", job["error"].get("message")))
    for name, value in rows:
        table.add_row(name, escape("-" if value is None else str(value)))
    console.print(table)


@jobs_app.command("create")
def jobs_create(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Base model, e.g. tiny-gpt2.")],
    training_file: Annotated[str, typer.Option(help="File id of the training data.")],
    validation_file: Annotated[str | None, typer.Option(help="File id for evaluation.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Goes into the model id.")] = None,
    epochs: Annotated[int | None, typer.Option(help="n_epochs (default: auto).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Default: auto.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Default: the catalog's.")] = None,
    adapter: Annotated[str, typer.Option(help="lora or full.")] = "lora",
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    extra: Annotated[
        str | None, typer.Option(help="JSON merged into the request body (search, resources...).")
    ] = None,
    follow: Annotated[bool, typer.Option(help="Follow it to its end.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a fine-tuning job."""
    hp: dict[str, Any] = {}
    for name, value in (
        ("n_epochs", epochs),
        ("batch_size", batch_size),
        ("learning_rate", learning_rate),
    ):
        if value is not None:
            hp[name] = value
    body: dict[str, Any] = {
        "model": model,
        "training_file": training_file,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        "adapter": {"type": adapter, **({"r": lora_r} if lora_r else {})},
    }
    optional: dict[str, Any] = {
        "validation_file": validation_file,
        "suffix": suffix,
        "seed": seed,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if extra:
        try:
            body.update(json.loads(extra))
        except json.JSONDecodeError as exc:
            err.print(f"[red]--extra is not JSON: {escape(str(exc))}")
            raise typer.Exit(2) from None
    with _client(ctx) as c:
        job = _call(c, "POST", "/v1/fine_tuning/jobs", json=body)
        if as_json and not follow:
            _print_json(job)
            return
        console.print(f"submitted {job['id']} ({job['status']})")
        if follow:
            _follow_job(c, job["id"])


@jobs_app.command("list")
def jobs_list(ctx: typer.Context, as_json: JsonFlag = False, limit: Limit = 20) -> None:
    """List your jobs, newest first."""
    with _client(ctx) as c:
        data = _list_all(c, "/v1/fine_tuning/jobs", limit)
    if as_json:
        _print_json(data)
    else:
        _table("jobs", ["id", "status", "model", "fine-tuned model", "created"], _job_rows(data))


@jobs_app.command("get")
def jobs_get(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Show one job."""
    with _client(ctx) as c:
        job = _call(c, "GET", f"/v1/fine_tuning/jobs/{job_id}")
    if as_json:
        _print_json(job)
    else:
        _show_job(job)


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Cancel a job (queued: at once; running: once the cluster stops it)."""
    with _client(ctx) as c:
        job = _call(c, "POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")
    if as_json:
        _print_json(job)
    else:
        console.print(f"{job['id']}: {job['status']}")


@jobs_app.command("events")
def jobs_events(
    ctx: typer.Context, job_id: str, as_json: JsonFlag = False, limit: Limit = 50
) -> None:
    """A job's events, oldest first."""
    with _client(ctx) as c:
        data = _list_all(c, f"/v1/fine_tuning/jobs/{job_id}/events", limit)
    if as_json:
        _print_json(data)
        return
    rows = [[_when(e["created_at"]), e["level"], e["message"]] for e in reversed(data)]
    _table(f"events of {job_id}", ["time", "level", "message"], rows)


@jobs_app.command("trials")
def jobs_trials(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """The trials of a hyperparameter search."""
    with _client(ctx) as c:
        data = _call(c, "GET", f"/v1/fine_tuning/jobs/{job_id}/trials")["data"]
    if as_json:
        _print_json(data)
        return
    rows = [
        [t["trial_id"], t["status"], json.dumps(t["params"]), t["best_metric"], t["iterations"]]
        for t in data
    ]
    _table(f"trials of {job_id}", ["trial", "status", "params", "best", "iterations"], rows)


@jobs_app.command("follow")
def jobs_follow(
    ctx: typer.Context,
    job_id: str,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 24 * 3600,
) -> None:
    """Show a live progress bar (step, epoch, loss, ETA) until the job ends, then the outcome.
    Exits 0 if it succeeded, 1 otherwise."""
    with _client(ctx) as c:
        _follow_job(c, job_id, timeout)


# Following rides out a control plane restart (an upgrade, a replica moving) this long.
FOLLOW_PATIENCE_S = 300.0


class _Follower:
    """New events of one job, oldest first, from the newest-first events API."""

    def __init__(self, client: httpx.Client, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.last_id: str | None = None

    def fresh(self) -> list[dict[str, Any]]:
        path = f"/v1/fine_tuning/jobs/{self.job_id}/events"
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
            page = _call(self.client, "GET", path, params=params, patience_s=FOLLOW_PATIENCE_S)
            for e in page["data"]:
                if e["id"] == self.last_id:
                    page["has_more"] = False
                    break
                out.append(e)
            if not page["has_more"] or not page["data"]:
                break
            after = page["data"][-1]["id"]
        out.reverse()
        if out:
            self.last_id = out[-1]["id"]
        return out


def _follow_job(client: httpx.Client, job_id: str, timeout_s: float = 24 * 3600) -> None:
    job = _call(client, "GET", f"/v1/fine_tuning/jobs/{job_id}")
    epochs = (job.get("hyperparameters") or {}).get("n_epochs", "?")
    search = job.get("search")
    follower = _Follower(client, job_id)
    deadline = time.monotonic() + timeout_s
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    unit = "trials" if search else "steps"
    task = progress.add_task(job["status"], total=None, detail="")
    trials_done: set[str] = set()
    seen = FollowState()  # the latest epoch, training loss and validation metrics
    with progress:
        while True:
            for e in follower.fresh():
                data = e.get("data") or {}
                kind = data.get("kind")
                if kind == "metrics" and not search:
                    if data.get("total_steps"):
                        progress.update(task, total=int(data["total_steps"]))
                    progress.update(task, completed=int(data.get("step", 0)))
                elif kind == "trial" and search:
                    progress.update(task, total=int(search.get("num_trials") or 0) or None)
                    if data.get("status") in ("terminated", "early_stopped", "error"):
                        trials_done.add(str(data.get("trial_id")))
                        progress.update(task, completed=len(trials_done))
                # Validation passes get a line each; training steps only move the bar.
                line = seen.see(e, search=bool(search))
                if e["type"] != "metrics" or line:
                    progress.console.print(f"  [dim]{_when(e['created_at'])}[/] "
                                           f"{escape(line or e['message'])}")  # fmt: skip
            progress.update(task, detail=seen.detail(epochs))
            job = _call(
                client, "GET", f"/v1/fine_tuning/jobs/{job_id}", patience_s=FOLLOW_PATIENCE_S
            )
            progress.update(task, description=f"{job['status']} ({unit})")
            if job["status"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                err.print(f"[red]{job_id} is still {job['status']} after {timeout_s:.0f} s")
                raise typer.Exit(1)
            time.sleep(1.0)
    _show_job(job, seen)
    if job["status"] != "succeeded":
        raise typer.Exit(1)


# -- models -------------------------------------------------------------------------------


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Base models and your fine-tuned models."""
    with _client(ctx) as c:
        data = _call(c, "GET", "/v1/models")["data"]
    if as_json:
        _print_json(data)
        return
    # A base model says what it is for; a fine-tuned one, what it was made from.
    rows = [[m["id"], m.get("task"), m.get("base_model") or m.get("description") or "",
             _when(m["created"])] for m in data]  # fmt: skip
    _table("models", ["id", "task", "base model / what it is for", "created"], rows)


@models_app.command("get")
def models_get(ctx: typer.Context, model_id: str) -> None:
    """One model, as JSON."""
    with _client(ctx) as c:
        _print_json(_call(c, "GET", f"/v1/models/{model_id}"))


@models_app.command("delete")
def models_delete(ctx: typer.Context, model_id: str) -> None:
    """Delete one of your fine-tuned models."""
    with _client(ctx) as c:
        _call(c, "DELETE", f"/v1/models/{model_id}")
    console.print(f"deleted {escape(model_id)}")


# -- deployments --------------------------------------------------------------------------

MinReplicas = Annotated[int | None, typer.Option(min=0, help="Replicas kept up (0: scale to 0).")]
MaxReplicas = Annotated[int | None, typer.Option(min=1, help="Most replicas.")]
Target = Annotated[
    float | None, typer.Option(help="Autoscaling target: ongoing requests per replica.")
]


def _deployment_body(
    min_replicas: int | None, max_replicas: int | None, target: float | None
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, value in (
        ("min_replicas", min_replicas),
        ("max_replicas", max_replicas),
        ("target_ongoing_requests", target),
    ):
        if value is not None:
            body[name] = value
    return body


def _deployment_rows(data: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [d["id"], d["model"], d["status"], d["min_replicas"], d["max_replicas"],
         d["target_ongoing_requests"]]
        for d in data
    ]  # fmt: skip


DEPLOYMENT_COLUMNS = ["id", "model", "status", "min", "max", "target"]


@deployments_app.command("create")
def deployments_create(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="A fine-tuned model id.")],
    min_replicas: MinReplicas = None,
    max_replicas: MaxReplicas = None,
    target_ongoing_requests: Target = None,
    as_json: JsonFlag = False,
) -> None:
    """Deploy a fine-tuned model (autoscaled between min and max replicas)."""
    body = {"model": model, **_deployment_body(min_replicas, max_replicas, target_ongoing_requests)}
    with _client(ctx) as c:
        d = _call(c, "POST", "/v1/deployments", json=body)
    if as_json:
        _print_json(d)
    else:
        _table("deployment", DEPLOYMENT_COLUMNS, _deployment_rows([d]))


@deployments_app.command("list")
def deployments_list(ctx: typer.Context, as_json: JsonFlag = False, limit: Limit = 100) -> None:
    """List your deployments."""
    with _client(ctx) as c:
        data = _list_all(c, "/v1/deployments", limit)
    if as_json:
        _print_json(data)
    else:
        _table("deployments", DEPLOYMENT_COLUMNS, _deployment_rows(data))


@deployments_app.command("get")
def deployments_get(ctx: typer.Context, deployment_id: str, as_json: JsonFlag = False) -> None:
    """Show one deployment."""
    with _client(ctx) as c:
        d = _call(c, "GET", f"/v1/deployments/{deployment_id}")
    if as_json:
        _print_json(d)
    else:
        _table("deployment", DEPLOYMENT_COLUMNS, _deployment_rows([d]))


@deployments_app.command("update")
def deployments_update(
    ctx: typer.Context,
    deployment_id: str,
    min_replicas: MinReplicas = None,
    max_replicas: MaxReplicas = None,
    target_ongoing_requests: Target = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a deployment's replicas or autoscaling target."""
    body = _deployment_body(min_replicas, max_replicas, target_ongoing_requests)
    if not body:
        err.print("[red]Nothing to change: give --min-replicas, --max-replicas or --target-...")
        raise typer.Exit(2)
    with _client(ctx) as c:
        d = _call(c, "PATCH", f"/v1/deployments/{deployment_id}", json=body)
    if as_json:
        _print_json(d)
    else:
        _table("deployment", DEPLOYMENT_COLUMNS, _deployment_rows([d]))


@deployments_app.command("delete")
def deployments_delete(ctx: typer.Context, deployment_id: str) -> None:
    """Delete a deployment."""
    with _client(ctx) as c:
        _call(c, "DELETE", f"/v1/deployments/{deployment_id}")
    console.print(f"deleted {escape(deployment_id)}")


# -- admin --------------------------------------------------------------------------------


def _quotas(
    max_running_jobs: int | None, max_queued_jobs: int | None, max_gpus: int | None
) -> dict[str, int] | None:
    given = {
        k: v
        for k, v in (
            ("max_running_jobs", max_running_jobs),
            ("max_queued_jobs", max_queued_jobs),
            ("max_gpus", max_gpus),
        )
        if v is not None
    }
    return given or None


QuotaOpt = Annotated[int | None, typer.Option(min=0)]


def _tenant_rows(data: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [t["id"], t["name"], t["weight"], json.dumps(t["quotas"]), _when(t["created_at"])]
        for t in data
    ]


TENANT_COLUMNS = ["id", "name", "weight", "quotas", "created"]


@tenants_app.command("create")
def tenants_create(
    ctx: typer.Context,
    name: str,
    weight: Annotated[float, typer.Option(help="Fair-share weight.")] = 1.0,
    max_running_jobs: QuotaOpt = None,
    max_queued_jobs: QuotaOpt = None,
    max_gpus: QuotaOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a tenant; prints its API key (shown once)."""
    body: dict[str, Any] = {"name": name, "weight": weight}
    if (q := _quotas(max_running_jobs, max_queued_jobs, max_gpus)) is not None:
        body["quotas"] = q
    with _client(ctx, admin=True) as c:
        created = _call(c, "POST", "/v1/admin/tenants", json=body)
    if as_json:
        _print_json(created)
        return
    _table("tenant", TENANT_COLUMNS, _tenant_rows([created["tenant"]]))
    console.print(f"API key (shown once): {created['api_key']}")


@tenants_app.command("list")
def tenants_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List tenants."""
    with _client(ctx, admin=True) as c:
        data = _call(c, "GET", "/v1/admin/tenants")["data"]
    if as_json:
        _print_json(data)
    else:
        _table("tenants", TENANT_COLUMNS, _tenant_rows(data))


@tenants_app.command("get")
def tenants_get(ctx: typer.Context, tenant_id: str, as_json: JsonFlag = False) -> None:
    """Show one tenant."""
    with _client(ctx, admin=True) as c:
        t = _call(c, "GET", f"/v1/admin/tenants/{tenant_id}")
    if as_json:
        _print_json(t)
    else:
        _table("tenant", TENANT_COLUMNS, _tenant_rows([t]))


@tenants_app.command("update")
def tenants_update(
    ctx: typer.Context,
    tenant_id: str,
    weight: Annotated[float | None, typer.Option(help="Fair-share weight.")] = None,
    max_running_jobs: QuotaOpt = None,
    max_queued_jobs: QuotaOpt = None,
    max_gpus: QuotaOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a tenant's weight or quotas."""
    body: dict[str, Any] = {}
    if weight is not None:
        body["weight"] = weight
    if (q := _quotas(max_running_jobs, max_queued_jobs, max_gpus)) is not None:
        body["quotas"] = q
    with _client(ctx, admin=True) as c:
        t = _call(c, "PATCH", f"/v1/admin/tenants/{tenant_id}", json=body)
    if as_json:
        _print_json(t)
    else:
        _table("tenant", TENANT_COLUMNS, _tenant_rows([t]))


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    tenant_id: str,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Issue another API key for a tenant (shown once)."""
    with _client(ctx, admin=True) as c:
        k = _call(c, "POST", f"/v1/admin/tenants/{tenant_id}/api_keys", json={"name": name})
    if as_json:
        _print_json(k)
    else:
        console.print(f"{k['id']}: {k['key']} (shown once)")


@keys_app.command("list")
def keys_list(ctx: typer.Context, tenant_id: str, as_json: JsonFlag = False) -> None:
    """List a tenant's API keys."""
    with _client(ctx, admin=True) as c:
        data = _call(c, "GET", f"/v1/admin/tenants/{tenant_id}/api_keys")["data"]
    if as_json:
        _print_json(data)
        return
    rows = [[k["id"], k.get("name"), k["prefix"], _when(k.get("revoked_at"))] for k in data]
    _table(f"API keys of {tenant_id}", ["id", "name", "prefix", "revoked"], rows)


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, tenant_id: str, key_id: str) -> None:
    """Revoke an API key."""
    with _client(ctx, admin=True) as c:
        _call(c, "DELETE", f"/v1/admin/tenants/{tenant_id}/api_keys/{key_id}")
    console.print(f"revoked {escape(key_id)}")


def register(app: typer.Typer) -> None:
    """Add these commands to the root `tuneplane` command."""
    app.command("login")(login)
    app.add_typer(files_app, name="files")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(models_app, name="models")
    app.add_typer(deployments_app, name="deployments")
    app.add_typer(admin_app, name="admin")

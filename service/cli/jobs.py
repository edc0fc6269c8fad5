"""`tuneplane jobs`: submit, list, show, cancel, pause, resume and follow fine-tuning jobs."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from service.cli.client import (
    JsonFlag,
    Limit,
    call,
    client,
    console,
    err,
    given,
    list_all,
    print_json,
    request,
    show,
    show_table,
    table,
    when,
)
from service.cli.follow import FollowState, finish_text, follow_job, validation_rows
from service.models.status import JobStatus

jobs_app = typer.Typer(help="Fine-tuning jobs.", no_args_is_help=True)

# How long following a job waits for its end, unless told.
FOLLOW_TIMEOUT_S = 24 * 3600
Timeout = Annotated[float, typer.Option(help="Give up after this many seconds.")]


class MethodName(StrEnum):
    """OpenAI's training methods that Tuneplane runs."""

    SUPERVISED = "supervised"
    DPO = "dpo"


MetadataOption = Annotated[
    list[str] | None,
    typer.Option("--metadata", help="key=value; repeat it for more pairs.", show_default=False),
]


def method_text(method: Any) -> str:
    """A job's `method` as a person reads it: its type, and DPO's beta."""
    if not isinstance(method, dict):
        return "supervised"
    kind = str(method.get("type") or "supervised")
    hp = (method.get(kind) or {}).get("hyperparameters") or {}
    return f"{kind} (beta {hp['beta']})" if kind == "dpo" and "beta" in hp else kind


def _job_row(j: dict[str, Any]) -> list[Any]:
    return [j["id"], j["status"], j["model"], j.get("fine_tuned_model"), when(j["created_at"])]


def _trial_row(t: dict[str, Any]) -> list[Any]:
    return [t["trial_id"], t["status"], json.dumps(t["params"]), t["best_metric"], t["iterations"]]


def show_job(job: dict[str, Any], seen: FollowState | None = None) -> None:
    """One job as a table of its fields (with the validation metrics `seen` following it)."""
    out = Table(title=f"job {escape(job['id'])}", show_header=False)
    out.add_column("", style="bold")
    out.add_column("", overflow="fold")
    hp = job.get("hyperparameters") or {}
    rows = [
        ("status", job["status"]),
        ("ETA", finish_text(job.get("estimated_finish"))),
        ("model", job["model"]),
        ("method", method_text(job.get("method"))),
        ("training file", job.get("training_file")),
        ("validation file", job.get("validation_file")),
        ("fine-tuned model", job.get("fine_tuned_model")),
        ("epochs / batch / lr", f"{hp.get('n_epochs')} / {hp.get('batch_size')} / "
                                f"{hp.get('learning_rate', hp.get('learning_rate_multiplier'))}"),
        ("trained tokens", job.get("trained_tokens")),
        *validation_rows(job, seen),
        ("created", when(job.get("created_at"))),
        ("finished", when(job.get("finished_at"))),
    ]  # fmt: skip
    if job.get("metadata"):
        rows.append(("metadata", "\n".join(f"{k}={v}" for k, v in job["metadata"].items())))
    if job.get("search_result"):
        rows.append(("best trial", json.dumps(job["search_result"])))
    if job.get("error"):
        rows.append(("error", job["error"].get("message")))
    for name, value in rows:
        out.add_row(name, escape("-" if value is None else str(value)))
    console.print(out)


def _follow(c: httpx.Client, job_id: str, timeout_s: float = FOLLOW_TIMEOUT_S) -> None:
    """Follow the job to its end, then show it; exits 1 unless it succeeded."""
    job, seen = follow_job(c, job_id, timeout_s)
    show_job(job, seen)
    if job["status"] != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


def _metadata(pairs: list[str] | None) -> dict[str, str]:
    """`--metadata key=value` options as a dict (a value may hold '=' itself)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            err.print(f"[red]--metadata takes key=value, not '{escape(pair)}'")
            raise typer.Exit(2)
        out[key] = value
    return out


def _extra(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        extra: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        err.print(f"[red]--extra is not JSON: {escape(str(exc))}")
        raise typer.Exit(2) from None
    return extra


@jobs_app.command("create")
def jobs_create(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Option(
            help="Base model (e.g. tiny-gpt2), or one of your fine-tuned models or their "
            "checkpoints to continue training from (ft:..., ft:...:ckpt-step-N)."
        ),
    ],
    training_file: Annotated[str, typer.Option(help="File id of the training data.")],
    validation_file: Annotated[str | None, typer.Option(help="File id for evaluation.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Goes into the model id.")] = None,
    epochs: Annotated[int | None, typer.Option(help="n_epochs (default: auto).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Default: auto.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Default: the catalog's.")] = None,
    method: Annotated[
        MethodName, typer.Option(help="supervised, or dpo (trains on a preference file).")
    ] = MethodName.SUPERVISED,
    beta: Annotated[
        float | None,
        typer.Option(help="DPO's beta, above 0 and at most 2 (default: auto, 0.1)."),
    ] = None,
    adapter: Annotated[
        str | None,
        typer.Option(
            help=(
                "lora, qlora (LoRA over a 4-bit base: less memory, served like lora) or full "
                "(default: lora; continuing a fine-tuned model, its own adapter)."
            ),
            show_default=False,
        ),
    ] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    metadata: MetadataOption = None,
    extra: Annotated[
        str | None, typer.Option(help="JSON merged into the request body (search, resources...).")
    ] = None,
    follow: Annotated[bool, typer.Option(help="Follow it to its end.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a fine-tuning job: supervised or DPO, from a base model or continuing one of
    your fine-tuned models."""
    if beta is not None and method != MethodName.DPO:
        err.print("[red]--beta is DPO's: give it with --method dpo")
        raise typer.Exit(2)
    hp = given(n_epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, beta=beta)
    body: dict[str, Any] = {
        "model": model,
        "training_file": training_file,
        # OpenAI's shape: {"type": "dpo", "dpo": {"hyperparameters": {...}}}.
        "method": {"type": method.value, method.value: {"hyperparameters": hp}},
        # Left out unless asked for: a job continuing a LoRA model keeps that model's
        # adapter, and the server refuses another rank for it.
        **(
            {"adapter": {"type": adapter or "lora", **({"r": lora_r} if lora_r else {})}}
            if adapter or lora_r
            else {}
        ),
        **given(validation_file=validation_file, suffix=suffix, seed=seed),
        **({"metadata": pairs} if (pairs := _metadata(metadata)) else {}),
        **_extra(extra),
    }
    with client(ctx) as c:
        job = call(c, "POST", "/v1/fine_tuning/jobs", json=body)
        if as_json and not follow:
            print_json(job)
            return
        console.print(f"submitted {job['id']} ({job['status']})")
        if follow:
            _follow(c, job["id"])


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    as_json: JsonFlag = False,
    limit: Limit = 20,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            help="Only jobs whose metadata has key=value; repeated, every pair must match.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """List your jobs, newest first."""
    pairs = _metadata(metadata)
    data = _filtered(ctx, pairs, limit) if pairs else list_all(ctx, "/v1/fine_tuning/jobs", limit)
    columns = ["id", "status", "model", "fine-tuned model", "created"]
    show_table(data, as_json, "jobs", columns, _job_row)


def _filtered(ctx: typer.Context, metadata: dict[str, str], limit: int) -> list[dict[str, Any]]:
    """`list_all` with the metadata filter on every page (httpx drops a query written into
    the path once `list_all` gives its own params)."""
    # OpenAI's deep-object form, as its clients send it: metadata[key]=value.
    query = {f"metadata[{k}]": v for k, v in metadata.items()}
    out: list[dict[str, Any]] = []
    after: str | None = None
    with client(ctx) as c:
        while len(out) < limit:
            params = {**query, "limit": min(100, limit - len(out)), **given(after=after)}
            page = call(c, "GET", "/v1/fine_tuning/jobs", params=params)
            out.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                break
            after = page["data"][-1]["id"]
    return out


@jobs_app.command("get")
def jobs_get(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Show one job."""
    show(request(ctx, "GET", f"/v1/fine_tuning/jobs/{job_id}"), as_json, show_job)


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Cancel a job (queued: at once; running: once the cluster stops it)."""
    job = request(ctx, "POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")
    show(job, as_json, _state_line)


@jobs_app.command("pause")
def jobs_pause(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Pause a running job: it saves a checkpoint at its next step and frees its workers."""
    job = request(ctx, "POST", f"/v1/fine_tuning/jobs/{job_id}/pause")
    show(job, as_json, _state_line)


@jobs_app.command("resume")
def jobs_resume(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """Resume a paused job: it is queued again and goes on from where it paused."""
    job = request(ctx, "POST", f"/v1/fine_tuning/jobs/{job_id}/resume")
    show(job, as_json, _state_line)


def _state_line(job: dict[str, Any]) -> None:
    # `state` names a change under way ("pausing") that `status` does not.
    console.print(f"{job['id']}: {job.get('state') or job['status']}")


@jobs_app.command("events")
def jobs_events(
    ctx: typer.Context, job_id: str, as_json: JsonFlag = False, limit: Limit = 50
) -> None:
    """A job's events, oldest first."""
    data = list_all(ctx, f"/v1/fine_tuning/jobs/{job_id}/events", limit)
    if as_json:
        print_json(data)  # as the API gives them: newest first
        return
    rows = [[when(e["created_at"]), e["level"], e["message"]] for e in reversed(data)]
    table(f"events of {job_id}", ["time", "level", "message"], rows)


@jobs_app.command("trials")
def jobs_trials(ctx: typer.Context, job_id: str, as_json: JsonFlag = False) -> None:
    """The trials of a hyperparameter search."""
    data = request(ctx, "GET", f"/v1/fine_tuning/jobs/{job_id}/trials")["data"]
    columns = ["trial", "status", "params", "best", "iterations"]
    show_table(data, as_json, f"trials of {job_id}", columns, _trial_row)


@jobs_app.command("follow")
def jobs_follow(
    ctx: typer.Context,
    job_id: str,
    timeout: Timeout = FOLLOW_TIMEOUT_S,
) -> None:
    """Show a live progress bar (step, epoch, loss, ETA) until the job ends, then the outcome.
    Exits 0 if it succeeded, 1 otherwise."""
    with client(ctx) as c:
        _follow(c, job_id, timeout)

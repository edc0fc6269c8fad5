"""`tuneplane deployments`: serve fine-tuned models, autoscaled between min and max replicas."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from service.cli.client import JsonFlag, Limit, console, err, given, list_all, request, show_table

deployments_app = typer.Typer(
    help="Serving deployments of fine-tuned models.", no_args_is_help=True
)

MinReplicas = Annotated[int | None, typer.Option(min=0, help="Replicas kept up (0: scale to 0).")]
MaxReplicas = Annotated[int | None, typer.Option(min=1, help="Most replicas.")]
Target = Annotated[
    float | None, typer.Option(help="Autoscaling target: ongoing requests per replica.")
]
EngineOption = Annotated[
    str | None,
    typer.Option("--engine", help="Generation engine: auto (the cluster's choice), vllm or hf."),
]
COLUMNS = ["id", "model", "status", "min", "max", "target", "engine"]


def _scaling(
    min_replicas: int | None,
    max_replicas: int | None,
    target: float | None,
    engine: str | None = None,
) -> dict[str, Any]:
    """The fields given: the server keeps (or defaults) the others."""
    return given(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_ongoing_requests=target,
        engine=engine,
    )


def _row(d: dict[str, Any]) -> list[Any]:
    return [d["id"], d["model"], d["status"], d["min_replicas"], d["max_replicas"],
            d["target_ongoing_requests"], d.get("engine", "auto")]  # fmt: skip


@deployments_app.command("create")
def deployments_create(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="A fine-tuned model id.")],
    min_replicas: MinReplicas = None,
    max_replicas: MaxReplicas = None,
    target_ongoing_requests: Target = None,
    engine: EngineOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Deploy a fine-tuned model (autoscaled between min and max replicas)."""
    scaling = _scaling(min_replicas, max_replicas, target_ongoing_requests, engine)
    body = {"model": model, **scaling}
    d = request(ctx, "POST", "/v1/deployments", json=body)
    show_table(d, as_json, "deployment", COLUMNS, _row)


@deployments_app.command("list")
def deployments_list(ctx: typer.Context, as_json: JsonFlag = False, limit: Limit = 100) -> None:
    """List your deployments."""
    show_table(list_all(ctx, "/v1/deployments", limit), as_json, "deployments", COLUMNS, _row)


@deployments_app.command("get")
def deployments_get(ctx: typer.Context, deployment_id: str, as_json: JsonFlag = False) -> None:
    """Show one deployment."""
    d = request(ctx, "GET", f"/v1/deployments/{deployment_id}")
    show_table(d, as_json, "deployment", COLUMNS, _row)


@deployments_app.command("update")
def deployments_update(
    ctx: typer.Context,
    deployment_id: str,
    min_replicas: MinReplicas = None,
    max_replicas: MaxReplicas = None,
    target_ongoing_requests: Target = None,
    engine: EngineOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a deployment's replicas, autoscaling target or engine."""
    body = _scaling(min_replicas, max_replicas, target_ongoing_requests, engine)
    if not body:
        err.print(
            "[red]Nothing to change: give --min-replicas, --max-replicas, --target-... or --engine"
        )
        raise typer.Exit(2)
    d = request(ctx, "PATCH", f"/v1/deployments/{deployment_id}", json=body)
    show_table(d, as_json, "deployment", COLUMNS, _row)


@deployments_app.command("delete")
def deployments_delete(ctx: typer.Context, deployment_id: str) -> None:
    """Delete a deployment."""
    request(ctx, "DELETE", f"/v1/deployments/{deployment_id}")
    console.print(f"deleted {escape(deployment_id)}")

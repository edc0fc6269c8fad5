"""`tuneplane secrets`: the tenant's secrets (experiment trackers' credentials).

A value is read from standard input or a hidden prompt, never from the command line
(where shell history and the process list would keep it), and is never printed."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from service.cli.client import JsonFlag, console, err, request, show_table, when

secrets_app = typer.Typer(
    help="Secrets your jobs' workers use (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...); write-only.",
    no_args_is_help=True,
)
COLUMNS = ["name", "created", "updated"]


def _row(s: dict[str, object]) -> list[object]:
    return [s["name"], when(s["created_at"]), when(s["updated_at"])]


def _read_value() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.read().rstrip("\r\n")
    return str(typer.prompt("Value", hide_input=True, confirmation_prompt=True))


@secrets_app.command("set")
def secrets_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="e.g. WANDB_API_KEY or MLFLOW_TRACKING_TOKEN.")],
    as_json: JsonFlag = False,
) -> None:
    """Set (or replace) a secret; its value comes from standard input or a hidden prompt."""
    value = _read_value()
    if not value:
        err.print("[red]Empty value: nothing set.")
        raise typer.Exit(2)
    s = request(ctx, "PUT", f"/v1/secrets/{name}", json={"value": value})
    show_table(s, as_json, "secret", COLUMNS, _row)


@secrets_app.command("list")
def secrets_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Your secrets' names and when they were set (never their values)."""
    show_table(request(ctx, "GET", "/v1/secrets")["data"], as_json, "secrets", COLUMNS, _row)


@secrets_app.command("delete")
def secrets_delete(ctx: typer.Context, name: str) -> None:
    """Delete a secret."""
    request(ctx, "DELETE", f"/v1/secrets/{name}")
    console.print(f"deleted {escape(name)}")

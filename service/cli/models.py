"""`tuneplane models`: the base models and your fine-tuned ones."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from service.cli.client import JsonFlag, console, print_json, request, show_table, when

models_app = typer.Typer(help="Base and fine-tuned models.", no_args_is_help=True)


def _model_row(m: dict[str, Any]) -> list[Any]:
    # A base model says what it is for; a fine-tuned one, what it was made from.
    return [m["id"], m.get("task"), m.get("base_model") or m.get("description") or "",
            when(m["created"])]  # fmt: skip


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Base models and your fine-tuned models."""
    data = request(ctx, "GET", "/v1/models")["data"]
    columns = ["id", "task", "base model / what it is for", "created"]
    show_table(data, as_json, "models", columns, _model_row)


@models_app.command("get")
def models_get(ctx: typer.Context, model_id: str) -> None:
    """One model, as JSON."""
    print_json(request(ctx, "GET", f"/v1/models/{model_id}"))


@models_app.command("delete")
def models_delete(ctx: typer.Context, model_id: str) -> None:
    """Delete one of your fine-tuned models."""
    request(ctx, "DELETE", f"/v1/models/{model_id}")
    console.print(f"deleted {escape(model_id)}")

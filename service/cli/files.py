"""`tuneplane files`: upload, list and delete training files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from service.cli.client import (
    JsonFlag,
    Limit,
    console,
    list_all,
    request,
    show,
    show_table,
    when,
)

files_app = typer.Typer(help="Training files.", no_args_is_help=True)


def _file_row(f: dict[str, Any]) -> list[Any]:
    return [f["id"], f["filename"], f["format"], f["examples"], f["bytes"], when(f["created_at"])]


def _print_uploaded(f: dict[str, Any]) -> None:
    console.print(f"{f['id']}  {escape(f['filename'])}: {f['examples']} {f['format']} examples")


@files_app.command("upload")
def files_upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    purpose: str = "fine-tune",
    as_json: JsonFlag = False,
) -> None:
    """Upload a JSONL training or validation file (validated as it uploads)."""
    with path.open("rb") as fh:
        f = request(
            ctx,
            "POST",
            "/v1/files",
            files={"file": (path.name, fh, "application/jsonl")},
            data={"purpose": purpose},
        )
    show(f, as_json, _print_uploaded)


@files_app.command("list")
def files_list(ctx: typer.Context, as_json: JsonFlag = False, limit: Limit = 100) -> None:
    """List your files."""
    data = list_all(ctx, "/v1/files", limit)
    columns = ["id", "filename", "format", "examples", "bytes", "created"]
    show_table(data, as_json, "files", columns, _file_row)


@files_app.command("delete")
def files_delete(ctx: typer.Context, file_id: str) -> None:
    """Delete a file."""
    request(ctx, "DELETE", f"/v1/files/{file_id}")
    console.print(f"deleted {escape(file_id)}")

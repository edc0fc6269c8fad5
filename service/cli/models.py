"""`tuneplane models`: the base models and your fine-tuned ones."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape

from service.cli.client import (
    JsonFlag,
    client,
    console,
    err,
    print_json,
    request,
    show_table,
    when,
)

models_app = typer.Typer(help="Base and fine-tuned models.", no_args_is_help=True)


def _model_row(m: dict[str, Any]) -> list[Any]:
    # A base model says what it is for; a fine-tuned one, what it was made from (and the
    # model it continued, if any).
    return [m["id"], m.get("task"), m.get("base_model") or m.get("description") or "",
            m.get("parent") or "", when(m["created"])]  # fmt: skip


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Base models and your fine-tuned models."""
    data = request(ctx, "GET", "/v1/models")["data"]
    columns = ["id", "task", "base model / what it is for", "continues", "created"]
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


class UnsafeArchive(ValueError):
    """A tar member that would land outside the output folder, or is not a plain file."""


def _member_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    name = member.name.replace("\\", "/")
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts:
        raise UnsafeArchive(f"refusing '{member.name}': outside the output folder")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"refusing '{member.name}': not a plain file or folder")
    return tuple(p for p in path.parts if p != ".")


def extract_model(archive: Path, output: Path) -> list[Path]:
    """The files of `archive` written into `output`, without the tar's one top folder.

    Every member is checked before anything is written: an absolute path, a ``..`` or
    anything but files and folders (links, devices) refuses the whole archive."""
    with tarfile.open(archive) as tar:
        members = [(m, _member_parts(m)) for m in tar.getmembers()]
        tops = {parts[0] for _, parts in members if parts}
        strip = 1 if len(tops) == 1 and all(len(p) > 1 for m, p in members if m.isfile()) else 0
        written: list[Path] = []
        output.mkdir(parents=True, exist_ok=True)
        for member, parts in members:
            if not member.isfile() or len(parts) <= strip:
                continue
            target = output.joinpath(*parts[strip:])
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file's data
            with source, target.open("wb") as fh:
                shutil.copyfileobj(source, fh)
            written.append(target)
    return written


def _api_error(r: httpx.Response) -> str:
    r.read()
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text


def download_archive(ctx: typer.Context, model_id: str, fmt: str | None, into: Path) -> None:
    """GET /v1/models/{id}/content streamed into the file `into`; an API error exits 1."""
    params = {"format": fmt} if fmt else {}
    with client(ctx) as c:
        # A merge loads the model before the first byte comes: wait for it as long as it takes.
        c.timeout = httpx.Timeout(c.timeout.connect, read=None)
        try:
            with c.stream("GET", f"/v1/models/{model_id}/content", params=params) as r:
                if r.status_code >= 400:
                    message = _api_error(r)
                    err.print(f"[red]Error {r.status_code}: {escape(message)}")
                    raise typer.Exit(1)
                with into.open("wb") as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)
        except httpx.TransportError as exc:
            err.print(f"[red]Cannot reach {escape(str(c.base_url))}: {escape(str(exc))}")
            raise typer.Exit(2) from None


@models_app.command("download")
def models_download(
    ctx: typer.Context,
    model_id: str,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The folder to write the model's files into.")
    ],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="adapter (the default for a LoRA model): the adapter as trained; merged: "
            "folded into the base weights, loadable by transformers without peft.",
        ),
    ] = None,
) -> None:
    """Download a fine-tuned model's (or checkpoint's) weights, config and tokenizer."""
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tuneplane-download-", dir=output.parent) as tmp:
        archive = Path(tmp) / "model.tar"
        download_archive(ctx, model_id, fmt, archive)
        try:
            written = extract_model(archive, output)
        except (UnsafeArchive, tarfile.TarError) as exc:
            err.print(f"[red]{escape(str(exc))}")
            raise typer.Exit(1) from None
    for path in written:
        console.print(f"{escape(str(path))}  ({path.stat().st_size:,} bytes)")
    console.print(f"wrote {len(written)} files to {escape(str(output))}")

"""What every API command shares: the HTTP client (where to connect, with which key), one
call with the API's error handling, paging, and printing answers as JSON or tables.

Where they connect, and with which key, comes from `--url` / `--api-key`, else
TUNEPLANE_URL / TUNEPLANE_API_KEY (TUNEPLANE_ADMIN_KEY for admin commands), else the
config file that `tuneplane login` writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.config import ClientSettings

console = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
Limit = Annotated[int, typer.Option(help="At most this many, newest first.", min=1)]
# One table row from one item of an API answer.
Row = Callable[[dict[str, Any]], list[Any]]

# Answers a restarting or upgrading control plane gives (through a load balancer).
UNAVAILABLE = (502, 503, 504)


@dataclass
class ClientOptions:
    """What the root command's --url / --api-key gave (None: use env or the file)."""

    url: str | None = None
    api_key: str | None = None


def client(ctx: typer.Context, *, admin: bool = False) -> httpx.Client:
    """A client for the service, with the tenant's key (the admin key with `admin`)."""
    opts = ctx.find_root().obj
    flags = {}
    if isinstance(opts, ClientOptions):
        flags = {k: v for k, v in (("url", opts.url), ("api_key", opts.api_key)) if v}
    settings = ClientSettings(**flags)  # type: ignore[arg-type]
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


def call(
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


def request(
    ctx: typer.Context, method: str, path: str, *, admin: bool = False, **kwargs: Any
) -> Any:
    """A command's one API call, on a client of its own."""
    with client(ctx, admin=admin) as c:
        return call(c, method, path, **kwargs)


def list_all(ctx: typer.Context, path: str, limit: int) -> list[dict[str, Any]]:
    """A listing, following `after` cursors until `limit` items or the end."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    with client(ctx) as c:
        while len(out) < limit:
            params: dict[str, Any] = {"limit": min(100, limit - len(out))}
            if after:
                params["after"] = after
            page = call(c, "GET", path, params=params)
            out.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                break
            after = page["data"][-1]["id"]
    return out


def given(**values: Any) -> dict[str, Any]:
    """The options the user gave (not None): a request body leaves the rest to the server."""
    return {name: value for name, value in values.items() if value is not None}


def print_json(value: Any) -> None:
    # Plain print: rich would wrap long lines and break the JSON for a pipe.
    typer.echo(json.dumps(value, indent=2))


def when(ts: Any) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(ts)))


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    out = Table(title=title)
    for name in columns:
        # Ids must stay whole to be copied: fold rather than cut.
        out.add_column(name, overflow="fold")
    for row in rows:
        out.add_row(*(escape("-" if v is None else str(v)) for v in row))
    console.print(out)


def show(answer: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """Print an API answer: as JSON for scripts, else as `human` shows it to a person."""
    if as_json:
        print_json(answer)
    else:
        human(answer)


def show_table(answer: Any, as_json: bool, title: str, columns: list[str], row: Row) -> None:
    """`show` with a table for a person: a row per item (of a list) or one row (of one
    object)."""

    def human(answer: Any) -> None:
        items = answer if isinstance(answer, list) else [answer]
        table(title, columns, [row(item) for item in items])

    show(answer, as_json, human)

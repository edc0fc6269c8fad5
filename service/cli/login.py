"""`tuneplane login`: check keys against a service and save them for the API commands."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape

from service.cli.client import call, console, err
from service.config import client_config_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pydantic-settings[toml] brings it
    import tomli as tomllib


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
            call(c, "GET", "/v1/models")
    if admin_key:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_key}"}) as c:
            call(c, "GET", "/v1/admin/tenants")
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

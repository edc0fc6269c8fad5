"""`tuneplane admin`: tenants and their API keys (needs the admin key)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from service.cli.client import JsonFlag, console, given, request, show, show_table, table, when

admin_app = typer.Typer(help="Administration (needs the admin key).", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants.", no_args_is_help=True)
keys_app = typer.Typer(help="A tenant's API keys.", no_args_is_help=True)
admin_app.add_typer(tenants_app, name="tenants")
admin_app.add_typer(keys_app, name="keys")

QuotaOpt = Annotated[int | None, typer.Option(min=0)]
BudgetOpt = Annotated[
    int | None,
    typer.Option(
        min=0, help="Tokens a calendar month (UTC), trained and served; then submits get 429."
    ),
]
TENANT_COLUMNS = ["id", "name", "weight", "quotas", "created"]


def _quotas(
    max_running_jobs: int | None,
    max_queued_jobs: int | None,
    max_gpus: int | None,
    monthly_token_budget: int | None,
) -> dict[str, int] | None:
    """The quotas given, None if none: the server keeps (or defaults) the others."""
    quotas = given(
        max_running_jobs=max_running_jobs,
        max_queued_jobs=max_queued_jobs,
        max_gpus=max_gpus,
        monthly_token_budget=monthly_token_budget,
    )
    return quotas or None


def _tenant_row(t: dict[str, Any]) -> list[Any]:
    return [t["id"], t["name"], t["weight"], json.dumps(t["quotas"]), when(t["created_at"])]


def _show_tenant(t: dict[str, Any], as_json: bool) -> None:
    show_table(t, as_json, "tenant", TENANT_COLUMNS, _tenant_row)


def _print_created(created: dict[str, Any]) -> None:
    """A new tenant, and its first API key: the one time it is shown."""
    table("tenant", TENANT_COLUMNS, [_tenant_row(created["tenant"])])
    console.print(f"API key (shown once): {created['api_key']}")


def _key_row(k: dict[str, Any]) -> list[Any]:
    return [k["id"], k.get("name"), k["prefix"], when(k.get("revoked_at"))]


@tenants_app.command("create")
def tenants_create(
    ctx: typer.Context,
    name: str,
    weight: Annotated[float, typer.Option(help="Fair-share weight.")] = 1.0,
    max_running_jobs: QuotaOpt = None,
    max_queued_jobs: QuotaOpt = None,
    max_gpus: QuotaOpt = None,
    monthly_token_budget: BudgetOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a tenant; prints its API key (shown once)."""
    quotas = _quotas(max_running_jobs, max_queued_jobs, max_gpus, monthly_token_budget)
    body = {"name": name, "weight": weight, **given(quotas=quotas)}
    created = request(ctx, "POST", "/v1/admin/tenants", admin=True, json=body)
    show(created, as_json, _print_created)


@tenants_app.command("list")
def tenants_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List tenants."""
    data = request(ctx, "GET", "/v1/admin/tenants", admin=True)["data"]
    show_table(data, as_json, "tenants", TENANT_COLUMNS, _tenant_row)


@tenants_app.command("get")
def tenants_get(ctx: typer.Context, tenant_id: str, as_json: JsonFlag = False) -> None:
    """Show one tenant."""
    _show_tenant(request(ctx, "GET", f"/v1/admin/tenants/{tenant_id}", admin=True), as_json)


@tenants_app.command("update")
def tenants_update(
    ctx: typer.Context,
    tenant_id: str,
    weight: Annotated[float | None, typer.Option(help="Fair-share weight.")] = None,
    max_running_jobs: QuotaOpt = None,
    max_queued_jobs: QuotaOpt = None,
    max_gpus: QuotaOpt = None,
    monthly_token_budget: BudgetOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a tenant's weight or quotas."""
    quotas = _quotas(max_running_jobs, max_queued_jobs, max_gpus, monthly_token_budget)
    body = given(weight=weight, quotas=quotas)
    path = f"/v1/admin/tenants/{tenant_id}"
    _show_tenant(request(ctx, "PATCH", path, admin=True, json=body), as_json)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    tenant_id: str,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Issue another API key for a tenant (shown once)."""
    path = f"/v1/admin/tenants/{tenant_id}/api_keys"
    created = request(ctx, "POST", path, admin=True, json={"name": name})
    show(created, as_json, lambda k: console.print(f"{k['id']}: {k['key']} (shown once)"))


@keys_app.command("list")
def keys_list(ctx: typer.Context, tenant_id: str, as_json: JsonFlag = False) -> None:
    """List a tenant's API keys."""
    data = request(ctx, "GET", f"/v1/admin/tenants/{tenant_id}/api_keys", admin=True)["data"]
    columns = ["id", "name", "prefix", "revoked"]
    show_table(data, as_json, f"API keys of {tenant_id}", columns, _key_row)


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, tenant_id: str, key_id: str) -> None:
    """Revoke an API key."""
    request(ctx, "DELETE", f"/v1/admin/tenants/{tenant_id}/api_keys/{key_id}", admin=True)
    console.print(f"revoked {escape(key_id)}")

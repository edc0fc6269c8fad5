"""`tuneplane webhooks`: endpoints told of job and deployment events, and their deliveries."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from service.cli.client import JsonFlag, Limit, console, list_all, request, show_table, when

webhooks_app = typer.Typer(
    help="Webhook endpoints: signed notices of job and deployment events.",
    no_args_is_help=True,
)

EVENT_TYPES = (
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.paused",
    "deployment.ready",
)
COLUMNS = ["id", "name", "url", "event types", "created"]
DELIVERY_COLUMNS = ["event id", "type", "status", "attempts", "last answer", "next", "delivered"]


def _row(e: dict[str, Any]) -> list[Any]:
    return [e["id"], e["name"] or None, e["url"], ", ".join(e["event_types"]),
            when(e["created_at"])]  # fmt: skip


def _delivery_row(d: dict[str, Any]) -> list[Any]:
    answer = d["last_status_code"] or (d["last_error"] or "")[:60] or None
    return [d["event_id"], d["event_type"], d["status"], d["attempts"], answer,
            when(d["next_attempt_at"]), when(d["delivered_at"])]  # fmt: skip


@webhooks_app.command("create")
def webhooks_create(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="Where to POST events (http or https).")],
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            help=f"An event type to send (repeat it); default: all of {', '.join(EVENT_TYPES)}.",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name for yourself.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add an endpoint. Its signing secret is printed this once: keep it."""
    body: dict[str, Any] = {"url": url, "event_types": event or list(EVENT_TYPES)}
    if name is not None:
        body["name"] = name
    e = request(ctx, "POST", "/v1/webhooks", json=body)
    show_table(e, as_json, "webhook endpoint", COLUMNS, _row)
    if not as_json:
        console.print(f"signing secret (shown once): {escape(e['signing_secret'])}")


@webhooks_app.command("list")
def webhooks_list(ctx: typer.Context, as_json: JsonFlag = False, limit: Limit = 100) -> None:
    """List your webhook endpoints."""
    show_table(list_all(ctx, "/v1/webhooks", limit), as_json, "webhook endpoints", COLUMNS, _row)


@webhooks_app.command("get")
def webhooks_get(ctx: typer.Context, webhook_id: str, as_json: JsonFlag = False) -> None:
    """Show one endpoint."""
    e = request(ctx, "GET", f"/v1/webhooks/{webhook_id}")
    show_table(e, as_json, "webhook endpoint", COLUMNS, _row)


@webhooks_app.command("delete")
def webhooks_delete(ctx: typer.Context, webhook_id: str) -> None:
    """Delete an endpoint; deliveries not yet made to it are dropped."""
    request(ctx, "DELETE", f"/v1/webhooks/{webhook_id}")
    console.print(f"deleted {escape(webhook_id)}")


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    ctx: typer.Context, webhook_id: str, as_json: JsonFlag = False, limit: Limit = 100
) -> None:
    """An endpoint's deliveries, newest first: status, attempts, its last answer."""
    rows = list_all(ctx, f"/v1/webhooks/{webhook_id}/deliveries", limit)
    show_table(rows, as_json, "deliveries", DELIVERY_COLUMNS, _delivery_row)
